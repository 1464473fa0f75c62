//! Jellyfin's known proxies: the addresses whose X-Forwarded-For Jellyfin believes. Without
//! them Jellyfin takes every client for the edge's address (and for a LAN client). The
//! app pod's init container runs `portcullis-operator jellyfin-known-proxies`, which
//! rewrites the `KnownProxies` element of `network.xml` and keeps the rest of the file.

use std::{fs, io, path::Path};

use regex::Regex;

const EMPTY_NETWORK_XML: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<NetworkConfiguration xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\n</NetworkConfiguration>\n";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `network.xml` with its `KnownProxies` set to `proxies`: the element is replaced when
/// present, added otherwise, and a new file is made when there is none.
pub fn with_known_proxies(current: Option<&str>, proxies: &[String]) -> Result<String, String> {
    let document = current
        .filter(|text| !text.trim().is_empty())
        .unwrap_or(EMPTY_NETWORK_XML);
    let entries: String = proxies
        .iter()
        .map(|proxy| format!("    <string>{}</string>\n", escape(proxy)))
        .collect();
    let element = format!("<KnownProxies>\n{entries}  </KnownProxies>");
    let existing = Regex::new(r"(?s)<KnownProxies\s*/>|<KnownProxies>.*?</KnownProxies>")
        .expect("valid pattern");
    if existing.is_match(document) {
        return Ok(existing
            .replace(document, regex::NoExpand(&element))
            .into_owned());
    }
    let close = "</NetworkConfiguration>";
    let at = document.rfind(close).ok_or_else(|| {
        "network.xml has no </NetworkConfiguration>; refusing to guess its structure".to_owned()
    })?;
    Ok(format!(
        "{}  {element}\n{}",
        &document[..at],
        &document[at..]
    ))
}

/// Rewrites the file at `path` (creating it and its directory when missing).
pub fn apply(path: &Path, proxies: &[String]) -> io::Result<()> {
    let current = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    let updated = with_known_proxies(current.as_deref(), proxies).map_err(io::Error::other)?;
    if current.as_deref() == Some(updated.as_str()) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("xml.portcullis");
    fs::write(&temporary, updated)?;
    fs::rename(temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies() -> Vec<String> {
        vec!["10.0.0.0/8".to_owned(), "172.16.0.0/12".to_owned()]
    }

    #[test]
    fn a_missing_file_becomes_a_minimal_configuration() {
        let xml = with_known_proxies(None, &proxies()).unwrap();
        assert!(xml.contains("<NetworkConfiguration"));
        assert!(xml.contains("<string>10.0.0.0/8</string>\n    <string>172.16.0.0/12</string>"));
    }

    #[test]
    fn existing_proxies_are_replaced_and_the_rest_is_kept() {
        let current = "<?xml version=\"1.0\"?>\n<NetworkConfiguration>\n  <EnableHttps>false</EnableHttps>\n  <KnownProxies>\n    <string>1.2.3.4</string>\n  </KnownProxies>\n  <LocalNetworkSubnets />\n</NetworkConfiguration>\n";
        let xml = with_known_proxies(Some(current), &proxies()).unwrap();
        assert!(!xml.contains("1.2.3.4"));
        assert!(
            xml.contains("<EnableHttps>false</EnableHttps>")
                && xml.contains("<LocalNetworkSubnets />")
        );
        assert_eq!(xml.matches("<KnownProxies>").count(), 1);
        assert_eq!(
            with_known_proxies(Some(&xml), &proxies()).unwrap(),
            xml,
            "rewriting is idempotent"
        );
    }

    #[test]
    fn an_empty_element_is_filled() {
        let current = "<NetworkConfiguration>\n  <KnownProxies />\n</NetworkConfiguration>\n";
        let xml = with_known_proxies(Some(current), &proxies()).unwrap();
        assert!(xml.contains("<string>10.0.0.0/8</string>") && !xml.contains("<KnownProxies />"));
    }

    #[test]
    fn a_file_of_another_shape_is_refused_not_mangled() {
        assert!(with_known_proxies(Some("<Other/>"), &proxies()).is_err());
    }

    #[test]
    fn the_file_is_written_only_when_it_changes() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-known-proxies-{}", std::process::id()));
        let path = dir.join("config/network.xml");
        apply(&path, &proxies()).unwrap();
        let first = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        apply(&path, &proxies()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), first);
        fs::remove_dir_all(dir).unwrap();
    }
}
