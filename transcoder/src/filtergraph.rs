//! Just enough of ffmpeg's filtergraph syntax to check the files a graph opens and to swap
//! CUDA filters for CPU ones: `[in]name=arg:key=value[out],next;...`, with `'` quotes and `\`
//! escapes. Pure.

/// One filter of a graph, with the text around it kept so the graph can be written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Whitespace and input labels before the name (`[0:v]`).
    pub(crate) before: String,
    /// The filter's name, with its `@instance` suffix if any.
    pub(crate) name: String,
    /// The raw, still escaped arguments after `=`.
    pub(crate) args: Option<String>,
    /// Output labels and whitespace after the arguments.
    pub(crate) after: String,
}

impl Filter {
    /// The name without `@instance`.
    pub(crate) fn base_name(&self) -> &str {
        self.name.split('@').next().unwrap_or_default()
    }

    /// The arguments split at top-level `:`, each as (key, raw value); positional ones have no
    /// key.
    pub(crate) fn arguments(&self) -> Vec<(Option<String>, String)> {
        let Some(args) = &self.args else {
            return Vec::new();
        };
        split_top_level(args, &[':'])
            .into_iter()
            .map(|(part, _)| match find_top_level(&part, '=') {
                Some(at) => (
                    Some(part[..at].trim().to_owned()),
                    part[at + 1..].to_owned(),
                ),
                None => (None, part),
            })
            .collect()
    }
}

/// A parsed graph: filters and the separators (`,` or `;`) between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Graph {
    /// The filters in order.
    pub(crate) filters: Vec<Filter>,
    /// `separators[i]` follows `filters[i]`; one fewer than filters.
    pub(crate) separators: Vec<char>,
}

impl Graph {
    /// Parses `text`; anything the grammar does not expect stays inside a filter's name or
    /// arguments, so checks see it.
    pub(crate) fn parse(text: &str) -> Graph {
        let mut filters = Vec::new();
        let mut separators = Vec::new();
        for (part, separator) in split_top_level(text, &[',', ';']) {
            filters.push(parse_filter(&part));
            if let Some(separator) = separator {
                separators.push(separator);
            }
        }
        Graph {
            filters,
            separators,
        }
    }

    /// The graph as text again.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for (index, filter) in self.filters.iter().enumerate() {
            out.push_str(&filter.before);
            out.push_str(&filter.name);
            if let Some(args) = &filter.args {
                out.push('=');
                out.push_str(args);
            }
            out.push_str(&filter.after);
            if let Some(separator) = self.separators.get(index) {
                out.push(*separator);
            }
        }
        out
    }
}

fn parse_filter(part: &str) -> Filter {
    let bytes = part.as_bytes();
    let mut start = 0;
    // Leading whitespace and [labels].
    loop {
        while start < bytes.len() && bytes[start].is_ascii_whitespace() {
            start += 1;
        }
        if bytes.get(start) == Some(&b'[') {
            match part[start..].find(']') {
                Some(close) => start += close + 1,
                None => break,
            }
        } else {
            break;
        }
    }
    // Trailing whitespace and [labels], scanning back from the end.
    let mut end = bytes.len();
    loop {
        while end > start && bytes[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        if end > start && bytes[end - 1] == b']' {
            match part[start..end].rfind('[') {
                Some(open) if !escaped_or_quoted(&part[start..], open) => end = start + open,
                _ => break,
            }
        } else {
            break;
        }
    }
    let body = &part[start..end];
    let (name, args) = match body.find('=') {
        Some(at) => (body[..at].to_owned(), Some(body[at + 1..].to_owned())),
        None => (body.to_owned(), None),
    };
    Filter {
        before: part[..start].to_owned(),
        name,
        args,
        after: part[end..].to_owned(),
    }
}

/// Whether the byte at `index` of `text` is inside quotes or escaped.
fn escaped_or_quoted(text: &str, index: usize) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if at == index {
            return quoted || escaped;
        }
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '\'' {
            quoted = !quoted;
        }
    }
    false
}

/// Splits at any of `separators` outside quotes, escapes and `[labels]`, keeping which
/// separator ended each part.
fn split_top_level(text: &str, separators: &[char]) -> Vec<(String, Option<char>)> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut label = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '\'' {
            quoted = !quoted;
        } else if !quoted && c == '[' {
            label = true;
        } else if !quoted && c == ']' {
            label = false;
        } else if !quoted && !label && separators.contains(&c) {
            parts.push((std::mem::take(&mut current), Some(c)));
            continue;
        }
        current.push(c);
    }
    parts.push((current, None));
    parts
}

fn find_top_level(text: &str, wanted: char) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '\'' {
            quoted = !quoted;
        } else if !quoted && c == wanted {
            return Some(at);
        }
    }
    None
}

/// A value with its quotes and escapes removed, as the filter sees it.
pub(crate) fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in value.trim().chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' && !quoted {
            escaped = true;
        } else if c == '\'' {
            quoted = !quoted;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jellyfin_subtitle_graph_parses_into_filters_with_their_paths() {
        let text = "[0:v]setparams=color_primaries=bt709,scale=trunc(min(max(iw\\,ih*a)\\,1920)/2)*2:trunc(ow/a/2)*2,subtitles=f='/media/A Movie (2020)/a\\:b.mkv':si=0:fontsdir='/cache/attachments/x'[v]";
        let graph = Graph::parse(text);
        let names: Vec<_> = graph.filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["setparams", "scale", "subtitles"]);
        assert_eq!(graph.render(), text);
        let subtitles = graph.filters[2].arguments();
        assert_eq!(subtitles[0].0.as_deref(), Some("f"));
        // Inside quotes a backslash is literal, as in av_get_token.
        assert_eq!(unescape(&subtitles[0].1), "/media/A Movie (2020)/a\\:b.mkv");
        assert_eq!(unescape("a\\:b"), "a:b");
        assert_eq!(unescape(&subtitles[2].1), "/cache/attachments/x");
        assert_eq!(
            (
                graph.filters[0].before.as_str(),
                graph.filters[2].after.as_str()
            ),
            ("[0:v]", "[v]")
        );
    }

    #[test]
    fn chains_separated_by_semicolons_keep_their_separators() {
        let text = "[0:v]scale=1280:-2[a];[a][1:v]overlay=x=0:y=0[out]";
        let graph = Graph::parse(text);
        assert_eq!(graph.separators, [';']);
        assert_eq!(graph.filters[1].base_name(), "overlay");
        assert_eq!(graph.filters[1].before, "[a][1:v]");
        assert_eq!(graph.render(), text);
    }
}
