# The WAF benchmarks' workload, sourced by waf.sh and waf-instructions.sh (after lib.sh):
# the edge's WAF settings, and a Jellyfin client's requests as a wrk script (see waf.sh).

# waf_document HTTPS ADMIN UPSTREAM: an edge document with the WAF on, CRS at paranoia level
# 1 in blocking mode (anomaly thresholds 5/4, no application exclusions, no response
# inspection, 128 KiB of body inspected), rules from CRS_DIR.
waf_document() {
  edge_document "$1" "$2" "$3"
  cat <<EOF
waf:
  mode: Block
  crsDir: $CRS_DIR
  paranoiaLevel: 1
  executingParanoiaLevel: 1
  inboundAnomalyThreshold: 5
  outboundAnomalyThreshold: 4
  appExclusions: false
  requestBodyLimit: 128Ki
  inspectResponses: false
EOF
}

# The requests, one of each kind, as waf.sh checks them before measuring.
BROWSE='/Users/4b2c8d0e3f1a4e6b9c7d5e3f1a2b4c6d/Items?SortBy=SortName%2CProductionYear&SortOrder=Ascending&IncludeItemTypes=Movie&Recursive=true&Fields=PrimaryImageAspectRatio%2CMediaSourceCount%2CBasicSyncInfo&ImageTypeLimit=1&EnableImageTypes=Primary%2CBackdrop%2CBanner%2CThumb&StartIndex=0&Limit=100'
SEARCH='/Search/Hints?searchTerm=the%20matrix&Limit=24&IncludeItemTypes=Movie'
PROGRESS_BODY='{"ItemId":"a1b2c3d4e5f60718293a4b5c6d7e8f90","MediaSourceId":"a1b2c3d4e5f60718293a4b5c6d7e8f90","PositionTicks":1234567890,"IsPaused":false,"IsMuted":false,"VolumeLevel":100,"PlayMethod":"DirectPlay","PlaySessionId":"f00dfeed1234","EventName":"timeupdate","CanSeek":true}'
ITEM=a1b2c3d4e5f60718293a4b5c6d7e8f90
SQLI='/Items?searchTerm=1%27%20UNION%20SELECT%20username%2C%20password%20FROM%20users--'
XSS='/Items?searchTerm=%3Cimg%20src%3Dx%20onerror%3Dalert(document.cookie)%3E'
UA='Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
AUTH='MediaBrowser Client="Jellyfin Web", Device="Firefox", DeviceId="TW96aWxsYS81LjA", Version="10.10.3", Token="0123456789abcdef0123456789abcdef"'


# lua_string TEXT: TEXT as the inside of a Lua string literal.
lua_string() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }

# write_waf_requests FILE: the wrk script (its argument: "benign" or "mixed").
write_waf_requests() {
  cat >"$1" <<EOF
-- A client's session, every request different as in real use: library pages (StartIndex),
-- searches (terms), playback progress (PositionTicks) and poster images (item ids, tags),
-- with the same headers on every request. mixed: six of every eight requests as benign,
-- then an SQL injection and an XSS.
local headers = {
  ["Host"] = "$HOST",
  ["User-Agent"] = "$(lua_string "$UA")",
  ["Accept"] = "application/json",
  ["Accept-Language"] = "en-US,en;q=0.5",
  ["X-Emby-Authorization"] = "$(lua_string "$AUTH")",
}
local json_headers = {}
for k, v in pairs(headers) do json_headers[k] = v end
json_headers["Content-Type"] = "application/json"
local terms = { "the%20matrix", "alien", "star%20wars", "am%C3%A9lie", "blade%20runner%202049",
  "spirited%20away", "heat", "the%20godfather%20part%20ii" }
local function hex(n)
  local t = {}
  for k = 1, n do t[k] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end
local browse = "$(lua_string "${BROWSE%&StartIndex=*}")&StartIndex="
local playing, play_session = hex(32), hex(12)
local mixed = false
local n = 0
function init(args)
  mixed = args[1] == "mixed"
end
local function benign(k)
  if k == 0 then
    return wrk.format("GET", browse .. (math.random(0, 19) * 100) .. "&Limit=100", headers)
  elseif k == 1 then
    return wrk.format("GET", "/Search/Hints?searchTerm=" .. terms[math.random(#terms)]
      .. "&Limit=24&IncludeItemTypes=Movie", headers)
  elseif k == 2 then
    return wrk.format("POST", "/Sessions/Playing/Progress", json_headers,
      '{"ItemId":"' .. playing .. '","MediaSourceId":"' .. playing .. '","PositionTicks":'
      .. math.random(0, 2147483647) .. ',"IsPaused":false,"IsMuted":false,"VolumeLevel":100,'
      .. '"PlayMethod":"DirectPlay","PlaySessionId":"' .. play_session
      .. '","EventName":"timeupdate","CanSeek":true}')
  end
  return wrk.format("GET", "/Items/" .. hex(32) .. "/Images/Primary?fillHeight=396&fillWidth=264"
    .. "&quality=96&tag=" .. hex(16), headers)
end
function request()
  n = n + 1
  if mixed and n % 8 == 6 then
    return wrk.format("GET", "$(lua_string "$SQLI")", headers)
  elseif mixed and n % 8 == 7 then
    return wrk.format("GET", "$(lua_string "$XSS")", headers)
  end
  return benign(n % 4)
end
EOF
}
