{% raw %}
# plexcdn_pref XML ID: sets REPLY to the value Plex's /:/prefs lists for the setting ID; fails when it lists none.
plexcdn_pref() {
    # An attribute value never holds a raw "<", so the match cannot run into the next setting.
    local pattern="<Setting id=\"$2\"[^<]* value=\"([^\"]*)\""
    [[ $1 =~ $pattern ]] || return 1
    REPLY=${BASH_REMATCH[1]}
    REPLY=${REPLY//&quot;/\"}
    REPLY=${REPLY//&apos;/\'}
    REPLY=${REPLY//&lt;/<}
    REPLY=${REPLY//&gt;/>}
    REPLY=${REPLY//&amp;/&}
}
{% endraw %}
