#!/usr/bin/env node
// A private-swarm peer for the lab, configured from kubo's own files (its JSON config and swarm.key),
// so that what plex-cdn renders for kubo is what forms the swarm here.
//
//   node peer.mjs --config CONFIG.json [--swarm-key swarm.key] --serve FILE --timeout SECONDS
//   node peer.mjs --config CONFIG.json [--swarm-key swarm.key] --fetch CID --out FILE --timeout SECONDS
//   node peer.mjs --config CONFIG.json --check-identity
//
// Prints one JSON object per line on stdout; the lab driver reads nothing else.

import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { bitswap } from '@helia/block-brokers'
import { unixfs } from '@helia/unixfs'
import { Helia } from '@helia/utils'
import { privateKeyFromProtobuf } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { createLibp2p } from 'libp2p'
import { CID } from 'multiformats/cid'

const SWARM_KEY_HEADER = '/key/swarm/psk/1.0.0/'
// Only plain TCP: the pre-shared-key protector wraps stream transports, so go-libp2p refuses QUIC and
// WebTransport in a private network and kubo runs its swarm over TCP there.
const TCP_ADDR = /^\/(ip4|ip6)\/[^/]+\/tcp\/\d+$/
const TCP_PEER_ADDR = /^\/(ip4|ip6)\/[^/]+\/tcp\/\d+\/p2p\/[1-9A-HJ-NP-Za-km-z]+$/
const DIAL_RETRY_MS = 500
const DIAL_TIMEOUT_MS = 3000

function emit (event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

function fail (reason, code = 1) {
  emit({ event: 'failed', reason })
  process.stderr.write(`peer.mjs: ${reason}\n`)
  process.exit(code)
}

function reasonOf (err) {
  return `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}`
}

// go-libp2p's decoder (core/pnet/codec.go, what kubo uses) rejects a swarm.key whose header or encoding
// line is wrong, while js-libp2p's only reads the third line: checking here keeps the lab from accepting a
// file kubo would refuse.
function readSwarmKey (path) {
  const raw = readFileSync(path)
  const lines = raw.toString('utf8').split('\n').map((line) => line.replace(/\r$/, ''))
  if (lines[0] !== SWARM_KEY_HEADER) {
    fail(`${path}: first line is ${JSON.stringify(lines[0])}, kubo expects ${SWARM_KEY_HEADER}`, 2)
  }
  if (lines[1] !== '/base16/') {
    fail(`${path}: encoding line is ${JSON.stringify(lines[1])}; plex-cdn writes /base16/`, 2)
  }
  if (!/^[0-9a-fA-F]{64}$/.test(lines[2] ?? '')) {
    fail(`${path}: the key line must be 64 hex digits (32 bytes)`, 2)
  }
  return raw
}

function loadIdentity (config) {
  const identity = config.Identity ?? {}
  if (typeof identity.PrivKey !== 'string' || typeof identity.PeerID !== 'string') {
    fail('the config has no Identity.PrivKey and Identity.PeerID strings', 2)
  }
  let privateKey
  try {
    privateKey = privateKeyFromProtobuf(Buffer.from(identity.PrivKey, 'base64'))
  } catch (err) {
    fail(`Identity.PrivKey is not a libp2p protobuf private key: ${reasonOf(err)}`, 2)
  }
  const derived = peerIdFromPrivateKey(privateKey).toString()
  if (derived !== identity.PeerID) {
    fail(`Identity.PeerID is ${identity.PeerID} but js-libp2p derives ${derived} from Identity.PrivKey`, 3)
  }
  return { privateKey, peerId: derived }
}

function parseCli () {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      'swarm-key': { type: 'string' },
      serve: { type: 'string' },
      fetch: { type: 'string' },
      out: { type: 'string' },
      timeout: { type: 'string' },
      'check-identity': { type: 'boolean', default: false }
    },
    strict: true
  })
  if (values.config == null) fail('--config is required', 2)
  if (values['check-identity']) return values
  if ((values.serve == null) === (values.fetch == null)) fail('give exactly one of --serve FILE or --fetch CID', 2)
  if (values.fetch != null && values.out == null) fail('--fetch needs --out FILE', 2)
  const timeout = Number(values.timeout)
  if (!(timeout > 0)) fail('--timeout SECONDS is required and must be positive', 2)
  values.timeout = timeout
  return values
}

async function main () {
  const options = parseCli()
  const config = JSON.parse(readFileSync(options.config, 'utf8'))
  const { privateKey, peerId } = loadIdentity(config)
  if (options['check-identity']) {
    emit({ event: 'identity', peerId })
    return 0
  }
  const deadline = Date.now() + options.timeout * 1000
  const psk = options['swarm-key'] != null ? readSwarmKey(options['swarm-key']) : null

  const swarm = config.Addresses?.Swarm ?? []
  const listen = swarm.filter((addr) => TCP_ADDR.test(addr))
  const bootstrap = config.Bootstrap ?? []
  const dialable = bootstrap.filter((addr) => TCP_PEER_ADDR.test(addr))
  for (const addr of [...swarm.filter((a) => !listen.includes(a)), ...bootstrap.filter((a) => !dialable.includes(a))]) {
    emit({ event: 'ignored', addr, reason: 'not a plain TCP multiaddr' })
  }

  const wrongPeers = new Map()
  // Nothing beyond the addresses in the config: no public bootstrap list, mDNS, DHT, relay, AutoNAT or UPnP.
  const libp2p = await createLibp2p({
    privateKey,
    addresses: { listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    ...(psk != null ? { connectionProtector: preSharedKey({ psk }) } : {}),
    peerDiscovery: [],
    services: { identify: identify() },
    connectionMonitor: { enabled: false },
    connectionGater: {
      // go-libp2p's handshake fails when the peer behind a /p2p/ address holds another key; js-libp2p 2.x
      // only learns the remote's ID from Noise and accepts it, so without this a wrong Bootstrap entry
      // would pass here and fail under kubo.
      denyOutboundEncryptedConnection: async (remotePeer, conn) => {
        const expected = conn.remoteAddr.getPeerId()
        if (expected == null || expected === remotePeer.toString()) return false
        wrongPeers.set(conn.remoteAddr.toString(), remotePeer.toString())
        return true
      }
    }
  })
  let connected = false
  libp2p.addEventListener('peer:connect', (evt) => {
    connected = true
    emit({ event: 'connected', peer: evt.detail.toString() })
  })

  const helia = new Helia({
    libp2p,
    blockstore: new MemoryBlockstore(),
    datastore: new MemoryDatastore(),
    // Bitswap asks connected peers only: without routers there is no provider lookup outside the swarm.
    blockBrokers: [bitswap()],
    routers: []
  })
  await helia.start()
  emit({ event: 'listening', peerId, addrs: libp2p.getMultiaddrs().map(String), privateNetwork: psk != null })

  const fs = unixfs(helia)
  let lastDialError = dialable.length === 0 ? 'Bootstrap names no TCP address' : 'the dial had not finished'

  const timer = setTimeout(() => {
    if (options.serve != null) {
      emit({ event: 'timeout' })
      process.exit(0)
    }
    const why = connected ? 'the fetch did not complete' : `no connection to a bootstrap peer (${lastDialError})`
    fail(`timed out after ${options.timeout}s: ${why}`)
  }, deadline - Date.now())

  if (options.serve != null) {
    const bytes = readFileSync(options.serve)
    const cid = await fs.addBytes(bytes)
    emit({ event: 'added', cid: cid.toString(), bytes: bytes.length })
  }

  // Dial each bootstrap peer until it answers or the deadline passes, as kubo keeps retrying its
  // bootstrap list. The fetch does not wait for every dial: bitswap sends its want list to each peer as
  // it connects, so one reachable bootstrap peer is enough.
  const dialing = Promise.all(dialable.map(async (addr) => {
    let reported = null
    while (Date.now() < deadline) {
      try {
        await libp2p.dial(multiaddr(addr), { signal: AbortSignal.timeout(Math.max(1, Math.min(DIAL_TIMEOUT_MS, deadline - Date.now()))) })
        return
      } catch (err) {
        lastDialError = wrongPeers.has(addr)
          ? `the peer at this address is ${wrongPeers.get(addr)}, not the one Bootstrap names`
          : reasonOf(err)
        if (lastDialError !== reported) {
          emit({ event: 'dial-failed', addr, reason: lastDialError })
          reported = lastDialError
        }
        await new Promise((resolve) => setTimeout(resolve, DIAL_RETRY_MS))
      }
    }
  }))

  if (options.fetch != null) {
    const cid = CID.parse(options.fetch)
    const hash = createHash('sha256')
    const chunks = []
    let size = 0
    try {
      for await (const chunk of fs.cat(cid, { signal: AbortSignal.timeout(Math.max(1, deadline - Date.now())) })) {
        hash.update(chunk)
        chunks.push(chunk)
        size += chunk.length
      }
    } catch (err) {
      const why = connected ? reasonOf(err) : `no connection to a bootstrap peer (${lastDialError})`
      fail(`fetching ${options.fetch}: ${why}`)
    }
    writeFileSync(options.out, Buffer.concat(chunks))
    emit({ event: 'fetched', cid: cid.toString(), bytes: size, sha256: hash.digest('hex') })
    clearTimeout(timer)
    return 0
  }
  await dialing
  return null
}

// A failure inside libp2p or Helia's background work must end the peer with a reason, not a bare stack trace.
process.on('uncaughtException', (err) => fail(`uncaught ${reasonOf(err)}`))
process.on('unhandledRejection', (err) => fail(`unhandled ${reasonOf(err)}`))

main().then(
  (code) => { if (code != null) process.exit(code) },
  (err) => fail(reasonOf(err))
)
