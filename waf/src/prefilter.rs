//! Literal prefilters: for a regular expression, sets of literals such that every match
//! contains a literal of each set, so a value that lacks all the literals of one set cannot
//! match and the expression need not run. The engine scans each transformed value once with
//! one Aho-Corasick automaton holding the literals of every rule, and runs only the
//! expressions whose sets all occurred.
//!
//! The sets are derived from the parsed expression (`regex-syntax`'s HIR): a literal
//! requires itself; a concatenation requires what each of its parts requires, and runs of
//! parts with few possible strings spelled out; an alternation requires, for each rank, the
//! union of what its branches require at that rank (a match comes from one branch, which
//! meets all of its own sets); a repetition with a minimum of at least one requires what its
//! body requires. Letters are compared without ASCII case (the automaton is
//! case-insensitive), which only widens the test.

use regex_syntax::ParserBuilder;
use regex_syntax::hir::{Class, Hir, HirKind};

use crate::transforms::{ByteSet, holds};

/// The most strings an exact set (spelled-out run) may hold.
const MAX_EXACT: usize = 256;
/// The most literals a required set may hold.
const MAX_SET: usize = 1024;
/// The most members of a class spelled out as one-byte literals.
const MAX_CLASS: usize = 12;
/// The most sets kept for one expression (the most selective).
const MAX_SETS: usize = 4;

/// A set of literals, one of which a match contains.
type Set = Vec<Vec<u8>>;

/// What a sub-expression matches and requires.
struct Info {
    /// Every string it can match, when that is a small finite set (lower-cased).
    exact: Option<Set>,
    /// Sets each of which a match meets, most selective first; empty when nothing is
    /// certain.
    required: Vec<Set>,
}

/// The literal sets every match of `pattern` meets (lower-cased, for an ASCII
/// case-insensitive search; each set sorted): a value that contains no literal of one of
/// the sets does not match. Empty when nothing is known, and the expression must always
/// run. `unicode` must be the mode the expression was compiled in.
pub fn required_literals(pattern: &str, unicode: bool) -> Vec<Set> {
    let Ok(hir) = ParserBuilder::new()
        .unicode(unicode)
        .utf8(false)
        .build()
        .parse(pattern)
    else {
        return Vec::new();
    };
    let mut sets = info(&hir).required;
    sets.retain(|s| !weak(s));
    sets
}

/// Per byte set of `sets`: whether `pattern` can match somewhere in a value made only of
/// its bytes (`unicode` as in [`required_literals`]). `false` is certain: every match is
/// made of literal and class bytes that are not all in the set. `true` may be wrong
/// (assertions such as `\b` and `^` are taken to hold), and an expression that does not
/// parse gives `true`.
pub fn matches_over(pattern: &str, unicode: bool, sets: &[ByteSet]) -> Vec<bool> {
    match ParserBuilder::new()
        .unicode(unicode)
        .utf8(false)
        .build()
        .parse(pattern)
    {
        Ok(hir) => sets.iter().map(|bytes| spells(&hir, bytes)).collect(),
        Err(_) => vec![true; sets.len()],
    }
}

/// Whether some string `hir` matches is made of bytes of `bytes`.
fn spells(hir: &Hir, bytes: &ByteSet) -> bool {
    let has = |b: u8| holds(bytes, b);
    let any_high = bytes[2] | bytes[3] != 0;
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => true,
        HirKind::Literal(l) => l.0.iter().all(|&b| has(b)),
        HirKind::Class(Class::Bytes(c)) => c.iter().any(|r| (r.start()..=r.end()).any(has)),
        HirKind::Class(Class::Unicode(c)) => c.iter().any(|r| {
            // A character past ASCII is encoded in bytes past ASCII only.
            (u32::from(r.start())..=u32::from(r.end()).min(0x7f))
                .any(|c| u8::try_from(c).is_ok_and(has))
                || (u32::from(r.end()) > 0x7f && any_high)
        }),
        HirKind::Capture(c) => spells(&c.sub, bytes),
        HirKind::Repetition(r) => r.min == 0 || spells(&r.sub, bytes),
        HirKind::Concat(parts) => parts.iter().all(|p| spells(p, bytes)),
        HirKind::Alternation(branches) => branches.iter().any(|b| spells(b, bytes)),
    }
}

/// Whether a set holds a literal that ordinary text is full of (two letters, digits or
/// usual separators): testing for it would cost more than it saves. One-byte literals are
/// not weak: the prefilter answers them from the bytes a value holds, which it knows
/// without scanning, and a value of hex digits or numbers lacks most letters.
fn weak(set: &[Vec<u8>]) -> bool {
    set.iter()
        .any(|l| l.len() == 2 && l.iter().all(|&b| common(b)))
}

/// Whether a one-byte literal is common in ordinary text (letters, digits, the usual
/// separators), and so a weak requirement.
fn common(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".,-_/:".contains(&b)
}

/// How selective a set is: the weight of its weakest literal (longer literals and rarer
/// bytes weigh more). Higher is better.
fn score(set: &[Vec<u8>]) -> usize {
    set.iter()
        .map(|l| 2 * l.len() + usize::from(l.iter().any(|&b| !common(b))))
        .min()
        .unwrap_or(0)
}

fn dedup(mut set: Set) -> Set {
    set.sort();
    set.dedup();
    set
}

/// A set usable as a requirement: non-empty, not too large, and without the empty string
/// (which every value contains).
fn usable(set: &Set) -> bool {
    !set.is_empty() && set.len() <= MAX_SET && set.iter().all(|l| !l.is_empty())
}

/// Whether meeting `a` implies meeting `b`: each literal of `a` contains one of `b`
/// (checked only on small sets; `false` otherwise).
fn implies(a: &Set, b: &Set) -> bool {
    a.len() * b.len() <= 4096
        && a.iter().all(|x| {
            b.iter()
                .any(|y| y.len() <= x.len() && x.windows(y.len()).any(|w| w == &y[..]))
        })
}

/// The most selective sets of a list, at most [`MAX_SETS`], without repeats or sets that
/// a kept one implies.
fn best(mut sets: Vec<Set>) -> Vec<Set> {
    sets.retain(usable);
    if sets.len() > 1 {
        sets.sort_by_cached_key(|s| (std::cmp::Reverse(score(s)), s.len()));
    }
    let mut kept: Vec<Set> = Vec::new();
    for s in sets {
        if kept.len() == MAX_SETS {
            break;
        }
        let s = dedup(s);
        if !kept.iter().any(|k| *k == s || implies(k, &s)) {
            kept.push(s);
        }
    }
    kept
}

/// Every concatenation of a string of `a` with a string of `b`, when there are few.
fn cross(a: &[Vec<u8>], b: &[Vec<u8>]) -> Option<Set> {
    if a.len().saturating_mul(b.len()) > MAX_EXACT {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in a {
        for y in b {
            let mut s = x.clone();
            s.extend_from_slice(y);
            out.push(s);
        }
    }
    Some(dedup(out))
}

fn class_members(class: &Class) -> Option<Set> {
    let mut out = Vec::new();
    match class {
        Class::Bytes(c) => {
            for r in c.iter() {
                for b in r.start()..=r.end() {
                    out.push(vec![b.to_ascii_lowercase()]);
                    if out.len() > 2 * MAX_CLASS {
                        return None;
                    }
                }
            }
        }
        Class::Unicode(c) => {
            for r in c.iter() {
                for ch in r.start()..=r.end() {
                    let mut buf = [0u8; 4];
                    out.push(ch.encode_utf8(&mut buf).as_bytes().to_ascii_lowercase());
                    if out.len() > 2 * MAX_CLASS {
                        return None;
                    }
                }
            }
        }
    }
    let out = dedup(out);
    (out.len() <= MAX_CLASS).then_some(out)
}

fn info(hir: &Hir) -> Info {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Info {
            exact: Some(vec![Vec::new()]),
            required: Vec::new(),
        },
        HirKind::Literal(l) => {
            let lit = l.0.to_ascii_lowercase();
            Info {
                required: best(vec![vec![lit.clone()]]),
                exact: Some(vec![lit]),
            }
        }
        HirKind::Class(c) => {
            let exact = class_members(c);
            Info {
                required: best(exact.iter().cloned().collect()),
                exact,
            }
        }
        HirKind::Capture(c) => info(&c.sub),
        HirKind::Repetition(r) => {
            let sub = info(&r.sub);
            match (r.min, r.max) {
                (0, Some(1)) => Info {
                    exact: sub.exact.map(|mut e| {
                        e.push(Vec::new());
                        dedup(e)
                    }),
                    required: Vec::new(),
                },
                (0, _) => Info {
                    exact: None,
                    required: Vec::new(),
                },
                (1, Some(1)) => sub,
                _ => Info {
                    exact: None,
                    required: sub.required,
                },
            }
        }
        HirKind::Alternation(branches) => {
            let infos: Vec<Info> = branches.iter().map(info).collect();
            let exact = infos
                .iter()
                .map(|i| i.exact.clone())
                .collect::<Option<Vec<_>>>()
                .map(|sets| dedup(sets.concat()))
                .filter(|s| s.len() <= MAX_EXACT);
            // Rank k of the result is the union of each branch's rank k (its last set when
            // it has fewer): whichever branch matched, it meets its own set of that rank.
            let ranks = infos.iter().map(|i| i.required.len()).max().unwrap_or(0);
            let required = if infos.iter().any(|i| i.required.is_empty()) {
                Vec::new()
            } else {
                best(
                    (0..ranks)
                        .map(|k| {
                            infos
                                .iter()
                                .flat_map(|i| i.required[k.min(i.required.len() - 1)].clone())
                                .collect()
                        })
                        .collect(),
                )
            };
            Info { exact, required }
        }
        HirKind::Concat(parts) => {
            // Each part's sets hold; so do runs of parts with small exact sets, spelled out.
            let mut sets = Vec::new();
            let mut run: Set = vec![Vec::new()];
            let mut whole = true;
            for part in parts {
                let i = info(part);
                match i.exact.as_deref().map(|e| (cross(&run, e), e)) {
                    Some((Some(c), _)) => run = c,
                    Some((None, e)) => {
                        whole = false;
                        sets.push(std::mem::replace(&mut run, e.to_vec()));
                    }
                    None => {
                        whole = false;
                        sets.push(std::mem::replace(&mut run, vec![Vec::new()]));
                    }
                }
                sets.extend(i.required);
            }
            let exact = whole.then(|| run.clone());
            sets.push(run);
            Info {
                exact,
                required: best(sets),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(p: &str) -> Vec<Vec<String>> {
        required_literals(p, false)
            .into_iter()
            .map(|s| {
                s.into_iter()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn literals_concatenations_and_alternations_are_required() {
        assert_eq!(sets("abc"), vec![vec!["abc"]]);
        assert_eq!(
            sets("(?i)(?:union|select)\\s+from"),
            vec![
                vec!["select", "union"],
                vec!["from"],
                vec!["\t", "\n", "\x0b", "\x0c", "\r", " "]
            ]
        );
        assert_eq!(sets("x(?:ab|cd)y"), vec![vec!["xaby", "xcdy"]]);
        assert_eq!(sets("(?i)<script"), vec![vec!["<script"]]);
        // Each branch meets its own sets: rank by rank, their unions hold.
        assert_eq!(
            sets("(?:abc[0-9]+def|ghij)"),
            vec![
                vec!["abc", "ghij"],
                vec!["def", "ghij"],
                vec!["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "ghij"]
            ]
        );
    }

    #[test]
    fn weak_sets_are_left_out() {
        // `on` is in most words; `=` is worth testing for.
        assert_eq!(sets("(?i)on[a-z]+="), vec![vec!["="]]);
        assert!(sets("ab.+").is_empty());
        // One byte costs no scan (the bytes a value holds are known), and ids or numbers
        // lack most letters: `j` rules out a JavaScript-scheme check on an item id.
        assert_eq!(sets("a.+b"), vec![vec!["a"], vec!["b"]]);
        assert_eq!(
            sets("(?i)(?:j|&#x4a;)\\s*a"),
            vec![vec!["a"], vec!["&#x4a;", "j"]]
        );
    }

    #[test]
    fn an_expression_spelled_with_bytes_outside_an_alphabet_cannot_match_over_it() {
        let hex = crate::transforms::bytes_present(b"0123456789abcdef");
        let over = |p: &str| matches_over(p, false, &[hex])[0];
        assert!(!over("(?i)<script"));
        assert!(!over("[\\s'\"]+(?:or|and)"));
        assert!(!over("(?:\\.\\./|%2e)"));
        // Case-insensitive letters and classes meet the alphabet.
        assert!(over("(?i)DEADBEEF"));
        assert!(over("[0-9]{10,}"));
        assert!(over("x*"));
        assert!(over("(?:zz|a)"));
        // Assertions are taken to hold.
        assert!(over("\\bdc\\b"));
        // Unicode classes past ASCII need bytes past ASCII; one parse answers each set.
        let sets = [b"0123".as_slice(), b"0\xc3"].map(crate::transforms::bytes_present);
        assert_eq!(matches_over("\\p{L}", true, &sets), [false, true]);
        // What does not parse may match.
        assert_eq!(matches_over("(", false, &[hex, hex]), [true, true]);
    }

    #[test]
    fn optional_or_unbounded_parts_require_nothing() {
        assert!(sets("x?").is_empty());
        assert!(sets(".*").is_empty());
        assert!(sets("^[a-z]+$").is_empty());
        assert!(sets("(?:abc|[a-z]+)").is_empty());
    }

    #[test]
    fn repetitions_keep_what_their_body_requires() {
        assert_eq!(sets("(?:abc)+<"), vec![vec!["abc"], vec!["<"]]);
        assert_eq!(sets("[<>]{2,}"), vec![vec!["<", ">"]]);
    }

    #[test]
    fn a_value_without_the_literals_never_matches() {
        // The claim the engine relies on, checked on CRS-like expressions and many values.
        let cases = [
            "(?i)\\b(?:select|union)\\b.{0,20}\\bfrom\\b",
            "(?i)on(?:error|load)\\s*=",
            "['\"`][\\s\\x0b]*(?:or|and)",
            "\\.\\./",
            "(?i)b[\"'\\)\\[\\x5c]*u[\"'\\)\\[\\x5c]*s[\\s\\x0b&\\),<>\\|]",
            "(?i)(?:<script|javascript:|on\\w+\\s*=)",
            "(?:\\$\\{|%24%7b)[a-z]+",
        ];
        let mut values: Vec<Vec<u8>> = [
            &b"SELECT a FROM t"[..],
            b"x onError = y",
            b"' or 1",
            b"../../etc",
            b"plain text",
            b"SortName,ProductionYear",
            b"b\"u's|",
            b"bus ",
            b"<ScRiPt>",
            b"${jndi",
        ]
        .iter()
        .map(|v| v.to_vec())
        .collect();
        // And pseudo-random strings over the bytes the expressions care about.
        let alphabet = b"abcdefijlnoprstuBSU <>'\"`=$({}%2c7./\\|&)\x0b\t";
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let mut v = Vec::new();
            let seed = next();
            for i in 0..(seed % 12) {
                v.push(alphabet[((seed >> (i * 5)) % alphabet.len() as u64) as usize]);
            }
            values.push(v);
        }
        for p in cases {
            let re = regex::bytes::Regex::new(p).unwrap();
            let sets = required_literals(p, false);
            for v in &values {
                let lower = v.to_ascii_lowercase();
                let has = |l: &Vec<u8>| lower.windows(l.len()).any(|w| w == &l[..]);
                let passes = sets.iter().all(|s| s.iter().any(has));
                assert!(passes || !re.is_match(v), "{p} on {v:?}");
            }
        }
    }
}
