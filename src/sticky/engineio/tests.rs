use super::*;
use proptest::prelude::*;

const EIO4_OPEN: &str = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
const EIO3_OPEN: &str = r#"96:0{"sid":"Iy1b4o4jmtPc9R2hAAAA","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}2:40"#;

#[test]
fn query_params() {
    let q = "EIO=4&transport=polling&t=Oa1&sid=abc&flag";
    assert_eq!(query_param(q, "transport"), Some("polling"));
    assert_eq!(query_param(q, "sid"), Some("abc"));
    assert_eq!(query_param(q, "flag"), Some(""));
    assert_eq!(query_param(q, "si"), None);
    assert_eq!(query_param("a=1&a=2", "a"), Some("1"));
    assert_eq!(query_param("", "a"), None);
    assert_eq!(query_param("sid=a%2Fb", "sid"), Some("a%2Fb"));
}

#[test]
fn query_sids() {
    assert_eq!(
        query_sid("EIO=4&transport=websocket&sid=lv_VI97HAXpY6yYWAAAC"),
        Some("lv_VI97HAXpY6yYWAAAC")
    );
    assert_eq!(query_sid("EIO=4&sid="), None);
    assert_eq!(query_sid("EIO=4"), None);
    let long = format!("sid={}", "x".repeat(MAX_SID_LEN + 1));
    assert_eq!(query_sid(&long).map(str::len), Some(MAX_SID_LEN + 1));
}

#[test]
fn handshakes() {
    assert!(is_handshake("EIO=4&transport=polling&t=Oa1"));
    assert!(is_handshake("EIO=3&transport=polling&b64=1"));
    assert!(is_handshake("EIO=4&transport=websocket"));
    assert!(is_handshake("EIO=4&transport=polling&sid="));
    assert!(!is_handshake("EIO=4&transport=polling&sid=abc"));
    assert!(!is_handshake("transport=polling"));
    assert!(!is_handshake("EIO=&transport=polling"));
    assert!(!is_handshake("XEIO=4"));
}

#[test]
fn cookies() {
    assert_eq!(cookie_sid("io=abc"), Some("abc"));
    assert_eq!(cookie_sid("a=1; io=abc; b=2"), Some("abc"));
    assert_eq!(cookie_sid("a=1;io=abc"), Some("abc"));
    assert_eq!(cookie_sid(r#"io="abc""#), Some("abc"));
    assert_eq!(cookie_sid("io=; io=def"), Some("def"));
    assert_eq!(cookie_sid("xio=abc; iox=def"), None);
    assert_eq!(cookie_sid("io"), None);
    assert_eq!(
        cookie_sid(&format!("io={}", "x".repeat(MAX_SID_LEN + 1))).map(str::len),
        Some(MAX_SID_LEN + 1)
    );
    assert_eq!(
        set_cookie_sid("io=abc; Path=/; HttpOnly; SameSite=Lax"),
        Some("abc")
    );
    assert_eq!(set_cookie_sid("io=abc"), Some("abc"));
    assert_eq!(set_cookie_sid("other=1; io=abc"), None);
    assert_eq!(set_cookie_sid("io=; Path=/"), None);
}

#[test]
fn decoding() {
    assert!(matches!(decode_sid("abc"), Some(Cow::Borrowed("abc"))));
    assert_eq!(decode_sid("a%2Fb%3d%3D").as_deref(), Some("a/b=="));
    assert_eq!(decode_sid("a+b").as_deref(), Some("a+b"));
    assert_eq!(decode_sid("%C3%A9").as_deref(), Some("é"));
    assert_eq!(decode_sid("%"), None);
    assert_eq!(decode_sid("%4"), None);
    assert_eq!(decode_sid("%zz"), None);
    assert_eq!(decode_sid("%FF"), None);
    assert_eq!(decode_sid(""), None);
}

#[test]
fn decoded_length_bound() {
    let max = "x".repeat(MAX_SID_LEN);
    assert_eq!(decode_sid(&max).as_deref(), Some(max.as_str()));
    assert_eq!(decode_sid(&format!("{max}x")), None);
    // The bound is on the sid, not on its encoding: a 128-byte sid of escaped characters fits.
    let slashes = "/".repeat(MAX_SID_LEN);
    let encoded = "%2F".repeat(MAX_SID_LEN);
    assert_eq!(decode_sid(&encoded).as_deref(), Some(slashes.as_str()));
    assert_eq!(decode_sid(&format!("{encoded}%2F")), None);
    assert_eq!(decode_sid(&format!("{encoded}x")), None);
}

#[test]
fn socket_io_4_open_packet() {
    assert_eq!(
        handshake_sid(EIO4_OPEN.as_bytes()),
        Some("lv_VI97HAXpY6yYWAAAC")
    );
    let with_more = format!("{EIO4_OPEN}\x1e40");
    assert_eq!(
        handshake_sid(with_more.as_bytes()),
        Some("lv_VI97HAXpY6yYWAAAC")
    );
}

#[test]
fn socket_io_2_text_payload() {
    let packet = EIO3_OPEN
        .split_once(':')
        .map(|(_, p)| p.trim_end_matches("2:40"));
    assert_eq!(packet.map(str::len), Some(96));
    assert_eq!(
        handshake_sid(EIO3_OPEN.as_bytes()),
        Some("Iy1b4o4jmtPc9R2hAAAA")
    );
}

#[test]
fn socket_io_2_binary_payload() {
    let packet = &EIO3_OPEN[3..99];
    let mut body = vec![0x00, 9, 6, 0xFF];
    body.extend_from_slice(packet.as_bytes());
    body.extend_from_slice(&[0x00, 2, 0xFF, b'4', b'0']);
    assert_eq!(handshake_sid(&body), Some("Iy1b4o4jmtPc9R2hAAAA"));
    assert_eq!(handshake_sid(&[0x00, 0xFF, b'0', b'{']), None);
    assert_eq!(handshake_sid(&[0x00, 10, 0xFF]), None);
}

#[test]
fn prefixes_never_give_a_truncated_sid() {
    for body in [EIO4_OPEN, EIO3_OPEN] {
        let sid = handshake_sid(body.as_bytes());
        for cut in 0..body.len() {
            let got = handshake_sid(&body.as_bytes()[..cut]);
            assert!(got.is_none() || got == sid, "cut {cut}: {got:?}");
        }
    }
    assert_eq!(handshake_sid(br#"0{"sid":"abc"#), None);
    assert_eq!(handshake_sid(br#"0{"sid":"abc""#), Some("abc"));
    assert_eq!(handshake_sid(b"96"), None);
}

#[test]
fn json_variants() {
    let cases: &[(&[u8], Option<&str>)] = &[
        (b"0{ \"sid\" : \"a1\" , \"x\":1}", Some("a1")),
        (
            b"0{\n\t\"upgrades\": [\"websocket\"],\n\t\"sid\": \"a2\"\n}",
            Some("a2"),
        ),
        (br#"0{"pingInterval":25000,"sid":"a3"}"#, Some("a3")),
        (
            br#"0{"x":"q\"\\","y":{"sid":"inner","z":[1,{"a":"]}"}]},"sid":"a4"}"#,
            Some("a4"),
        ),
        (br#"0{"data":{"sid":"inner"}}"#, None),
        (br#"0{"x":"\"sid\":\"fake\"","sid":"a5"}"#, Some("a5")),
        (br#"0{"s\u0069d":"esc","sid":"a6"}"#, Some("a6")),
        (
            br#"0{"x":true,"y":null,"z":-1.5e3,"sid":"r.ab/c+="}"#,
            Some("r.ab/c+="),
        ),
        (br#"0{"sid":"caf\u00e9"}"#, None),
        (br#"0{"sid":""}"#, None),
        (br#"0{"sid":42}"#, None),
        (br#"0{"sid":null}"#, None),
        (br#"0{}"#, None),
        (br#"0["sid","a"]"#, None),
        (br#"4{"sid":"a"}"#, None),
        (br#"0{"x":,"sid":"a"}"#, None),
        (b"", None),
    ];
    for (body, want) in cases {
        assert_eq!(
            handshake_sid(body),
            *want,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn sid_length_bound() {
    let ok = format!(r#"0{{"sid":"{}"}}"#, "s".repeat(MAX_SID_LEN));
    assert_eq!(
        handshake_sid(ok.as_bytes()).map(str::len),
        Some(MAX_SID_LEN)
    );
    let long = format!(r#"0{{"sid":"{}"}}"#, "s".repeat(MAX_SID_LEN + 1));
    assert_eq!(handshake_sid(long.as_bytes()), None);
}

/// Some JSON member that is not the top-level sid.
fn other_member() -> impl Strategy<Value = String> {
    let key = "[a-zA-Z]{1,12}".prop_filter("not sid", |k| k != "sid");
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("true".to_owned()),
        Just("null".to_owned()),
        r#"[a-z ,:{}\[\]]{0,10}"#.prop_map(|s| format!("\"{s}\\\"\\\\x\"")),
        Just(r#"["websocket","polling"]"#.to_owned()),
        Just(r#"{"sid":"nested","a":[{"b":"}"}]}"#.to_owned()),
    ];
    (key, value).prop_map(|(k, v)| format!("\"{k}\":{v}"))
}

/// A sid JSON.stringify leaves unescaped: no quote, backslash or control character.
fn sid() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{20}",
        r#"[ !#-\[\]-~]{1,128}"#,
        r#"[^"\\\x00-\x1f]{1,40}"#,
    ]
    .prop_filter("bounded", |s| s.len() <= MAX_SID_LEN)
}

/// Frames an open packet as EIO=4, EIO=3 text or EIO=3 binary, with a trailing packet.
fn frame(packet: &str, how: u8) -> Vec<u8> {
    let len = packet.encode_utf16().count().to_string();
    match how % 3 {
        0 => format!("{packet}\x1e40").into_bytes(),
        1 => format!("{len}:{packet}2:40").into_bytes(),
        _ => {
            let mut body = vec![0x00];
            body.extend(len.bytes().map(|d| d - b'0'));
            body.push(0xFF);
            body.extend_from_slice(packet.as_bytes());
            body
        }
    }
}

proptest! {
    #[test]
    fn text_parsers_never_panic(s in ".{0,300}", name in "[a-z]{0,4}") {
        let _ = query_param(&s, &name);
        let _ = query_sid(&s);
        let _ = is_handshake(&s);
        let _ = cookie_sid(&s);
        let _ = set_cookie_sid(&s);
        let _ = decode_sid(&s);
    }

    #[test]
    fn handshake_sid_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = handshake_sid(&body);
    }

    #[test]
    fn handshake_sid_never_panics_on_near_packets(tail in r#"[\x00-\xff{}\[\]":,\\ sid0-9]{0,200}"#, how in 0u8..4) {
        let mut body = match how { 0 => b"0{".to_vec(), 1 => b"12:0{".to_vec(), 2 => vec![0, 1, 0xFF, b'0'], _ => Vec::new() };
        body.extend_from_slice(tail.as_bytes());
        let _ = handshake_sid(&body);
    }

    #[test]
    fn handshake_sid_finds_generated_sids(
        sid in sid(),
        before in proptest::collection::vec(other_member(), 0..4),
        after in proptest::collection::vec(other_member(), 0..4),
        ws in "[ \t\r\n]{0,2}",
        how in 0u8..3,
    ) {
        let mut members = before;
        members.push(format!("\"sid\"{ws}:{ws}\"{sid}\""));
        members.extend(after);
        let packet = format!("0{{{ws}{}{ws}}}", members.join(&format!("{ws},{ws}")));
        let body = frame(&packet, how);
        prop_assert_eq!(handshake_sid(&body), Some(sid.as_str()));
        for cut in 0..body.len() {
            let got = handshake_sid(&body[..cut]);
            prop_assert!(got.is_none() || got == Some(sid.as_str()));
        }
    }
}
