//! The one small shape every error response of the edge shares: a status, its standard
//! phrase and the request id, as HTML for browsers or JSON when `Accept` asks for it. It
//! names neither the policy that decided nor the origin behind the edge.

use bytes::Bytes;
use http::StatusCode;

use crate::request_id::RequestId;

/// `Content-Type` of the HTML page.
pub const HTML: &str = "text/html; charset=utf-8";
/// `Content-Type` of the JSON body.
pub const JSON: &str = "application/json";

/// Whether a client that sent this `Accept` gets JSON: it names a JSON type and not HTML
/// (browsers always list `text/html`).
pub fn wants_json(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let has = |needle: &[u8]| {
        accept
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    has(b"json") && !has(b"text/html")
}

/// Renders the error page: its content type and body.
pub fn render(status: StatusCode, request_id: &RequestId, json: bool) -> (&'static str, Bytes) {
    let code = status.as_u16();
    let phrase = status.canonical_reason().unwrap_or("Error");
    let id = request_id.as_str();
    if json {
        let body = format!(r#"{{"status":{code},"error":"{phrase}","requestId":"{id}"}}"#);
        (JSON, Bytes::from(body))
    } else {
        let body = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{code} {phrase}</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;\
             padding:0 1rem;color:#222}}code{{background:#eee;padding:.1rem .3rem}}</style>\
             </head><body><h1>{code} {phrase}</h1>\
             <p>The request could not be completed.</p>\
             <p>Request ID: <code>{id}</code></p></body></html>\n"
        );
        (HTML, Bytes::from(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_id::RequestIds;

    #[test]
    fn browsers_get_html() {
        let accept = b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(!wants_json(Some(accept)));
        assert!(!wants_json(None));
        assert!(!wants_json(Some(b"*/*")));
    }

    #[test]
    fn api_clients_asking_for_json_get_json() {
        assert!(wants_json(Some(b"application/json")));
        assert!(wants_json(Some(b"Application/JSON; q=1")));
        assert!(wants_json(Some(b"application/problem+json")));
    }

    #[test]
    fn the_json_shape_carries_status_phrase_and_request_id() {
        let id = RequestIds::with_seed(1).next_id();
        let (content_type, body) = render(StatusCode::BAD_GATEWAY, &id, true);
        assert_eq!(content_type, JSON);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["status"], 502);
        assert_eq!(value["error"], "Bad Gateway");
        assert_eq!(value["requestId"], id.as_str());
    }

    #[test]
    fn the_html_page_carries_status_and_request_id() {
        let id = RequestIds::with_seed(2).next_id();
        let (content_type, body) = render(StatusCode::PAYLOAD_TOO_LARGE, &id, false);
        assert_eq!(content_type, HTML);
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("413 Payload Too Large"));
        assert!(text.contains(id.as_str()));
    }
}
