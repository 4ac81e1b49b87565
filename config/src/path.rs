//! The one path normaliser: request paths before routing, route prefixes, Ingress paths.
//!
//! A route is chosen by the normal form of the request's path, and that normal form is what the
//! backend receives, so the two can never disagree (`/public/../internal` is `/internal`, routed
//! and forwarded as such). The rules, RFC 3986 §6.2.2 plus an edge proxy's refusals:
//!
//! - a percent-escape of an unreserved character is decoded (`%2e` → `.`, `%7E` → `~`, `%41` →
//!   `A`); any other escape keeps its byte and gets upper-case hex (`%2f` → `%2F`), so a double
//!   encoding such as `%252e` stays as it is;
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4); a `..` that climbs above `/` is refused;
//! - with `merge_slashes`, empty segments go (`/a//b` → `/a/b`); a trailing `/` stays;
//! - refused: a malformed escape, `%00`, a raw `\` (Windows backends read it as `/`), `%2F` and
//!   `%5C` when `encoded_slashes` is `reject`, and a segment that a lenient backend would read as a
//!   dot segment: `..;x` (Tomcat and Jetty drop `;` parameters), `..%3B`, `a%2F..`;
//! - the query is not the normaliser's: callers pass the path alone.
//!
//! Routes are then matched on [`routing_key`]: the normal form without `;` parameters, as
//! Tomcat, Jetty and Spring read a path, so `/internal;x/secret` is `/internal`'s whatever the
//! backend (the forwarded path keeps its parameters).
//!
//! An already-normal path (the common case) costs one scan and no allocation.

use std::borrow::Cow;

/// How request paths are normalised before routing (the config's `paths:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    /// Drop empty segments (`//`), as nginx and Envoy Gateway do by default.
    pub merge_slashes: bool,
    /// What `%2F` and `%5C` get.
    pub encoded_slashes: EncodedSlashes,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            encoded_slashes: EncodedSlashes::Keep,
        }
    }
}

/// What an encoded `/` or `\` (`%2F`, `%5C`) in a request path gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodedSlashes {
    /// Forwarded as it is (upper-case hex); it is part of its segment, not a separator.
    Keep,
    /// The request is refused with 400.
    Reject,
}

/// Why a request path has no normal form; the message is the 400's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `..` climbs above the root.
    AboveRoot,
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// `%00`.
    EncodedNul,
    /// A raw `\`.
    Backslash,
    /// `%2F` or `%5C` with `encoded_slashes: reject`.
    EncodedSlash,
    /// A segment that backends differ on, such as `..;x` or `a%2F..`.
    AmbiguousDotSegment,
    /// Neither `/...` nor `*`.
    NotAbsolute,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

impl PathError {
    /// The reason as a static string (the 400's body, with no allocation).
    pub fn reason(self) -> &'static str {
        match self {
            Self::AboveRoot => "the path climbs above '/' with '..'",
            Self::InvalidEscape => "the path has a malformed percent-escape",
            Self::EncodedNul => "the path has an encoded NUL (%00)",
            Self::Backslash => "the path has a backslash",
            Self::EncodedSlash => "the path has an encoded '/' or '\\' (%2F, %5C)",
            Self::AmbiguousDotSegment => "the path has a segment that backends may read as '.' or '..'",
            Self::NotAbsolute => "the path does not start with '/'",
        }
    }
}

/// The normal form of `path` (no query), borrowed when it already is normal.
#[inline]
pub fn normalize(path: &str, options: PathOptions) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        // `OPTIONS *` is the one target that is not a path.
        return if path == "*" {
            Ok(Cow::Borrowed(path))
        } else {
            Err(PathError::NotAbsolute)
        };
    }
    let mut prev = b'/';
    for &c in &bytes[1..] {
        match c {
            b'%' => return rewrite(path, options),
            b'\\' => return Err(PathError::Backslash),
            // A segment starting with a dot may be a dot segment.
            b'.' if prev == b'/' => return rewrite(path, options),
            b'/' if prev == b'/' && options.merge_slashes => return rewrite(path, options),
            _ => {}
        }
        prev = c;
    }
    Ok(Cow::Borrowed(path))
}

/// What a normalised path is routed by: each segment without its `;` parameters (and, with
/// `merge_slashes`, without the empty segments that leaves). Borrowed when there is no `;`.
pub fn routing_key(normal: &str, options: PathOptions) -> Cow<'_, str> {
    if !normal.contains(';') {
        return Cow::Borrowed(normal);
    }
    let mut key = String::with_capacity(normal.len());
    let mut segments = normal.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let bare = segment.split_once(';').map_or(segment, |(before, _)| before);
        if bare.is_empty() && options.merge_slashes && segments.peek().is_some() {
            continue;
        }
        key.push('/');
        key.push_str(bare);
    }
    Cow::Owned(key)
}

/// The slow path: decode, then remove dot segments; borrowed again when nothing changed.
#[cold]
fn rewrite(path: &str, options: PathOptions) -> Result<Cow<'_, str>, PathError> {
    let decoded = decode_unreserved(path, options)?;
    let mut out = String::with_capacity(decoded.len());
    // Where each kept segment's `/` starts in `out`, so `..` can remove it.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                let start = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(start);
                trailing_slash = last;
            }
            "" if options.merge_slashes && !last => {}
            _ => {
                if ambiguous_dot_segment(segment) {
                    return Err(PathError::AmbiguousDotSegment);
                }
                starts.push(out.len());
                out.push('/');
                out.push_str(segment);
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// `path` with unreserved escapes decoded and the others in upper-case hex; refuses what
/// [`PathError`] lists about bytes.
fn decode_unreserved(path: &str, options: PathOptions) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find(['%', '\\']) {
        out.push_str(&rest[..at]);
        let tail = &rest.as_bytes()[at..];
        if tail[0] == b'\\' {
            return Err(PathError::Backslash);
        }
        let (Some(hi), Some(lo)) = (tail.get(1).and_then(hex), tail.get(2).and_then(hex)) else {
            return Err(PathError::InvalidEscape);
        };
        let byte = hi << 4 | lo;
        match byte {
            0 => return Err(PathError::EncodedNul),
            b'/' | b'\\' if options.encoded_slashes == EncodedSlashes::Reject => return Err(PathError::EncodedSlash),
            b if is_unreserved(b) => out.push(b as char),
            b => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// True for a segment that a lenient backend reads as `.` or `..`: one that splits at `%2F` or
/// `%5C`, or drops what follows `;` (`%3B` included), into a piece that is a dot segment.
fn ambiguous_dot_segment(segment: &str) -> bool {
    if !segment.contains([';', '%']) {
        return false;
    }
    let lenient = segment.replace("%2F", "/").replace("%5C", "/").replace("%3B", ";");
    lenient
        .split('/')
        .map(|piece| piece.split_once(';').map_or(piece, |(before, _)| before))
        .any(|piece| piece == "." || piece == "..")
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3: ALPHA / DIGIT / `-` / `.` / `_` / `~`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: PathOptions = PathOptions {
        merge_slashes: true,
        encoded_slashes: EncodedSlashes::Keep,
    };

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, KEEP).map(Cow::into_owned)
    }

    /// The vector table: input → normal form, or the refusal.
    #[test]
    fn vectors() {
        use PathError::*;
        let ok: &[(&str, &str)] = &[
            // Already normal.
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/a.b/c..d/...", "/a.b/c..d/..."),
            ("/.well-known/acme", "/.well-known/acme"),
            ("/a;b=c/d", "/a;b=c/d"),
            ("/caf\u{e9}/\u{2603}", "/caf\u{e9}/\u{2603}"),
            ("*", "*"),
            // Dot segments in every position.
            ("/.", "/"),
            ("/./", "/"),
            ("/./a", "/a"),
            ("/a/.", "/a/"),
            ("/a/./b", "/a/b"),
            ("/a/..", "/"),
            ("/a/../", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/../../c", "/c"),
            ("/public/../internal/secret", "/internal/secret"),
            ("/public/./../internal/./secret", "/internal/secret"),
            ("/a/./././b/./", "/a/b/"),
            // Encoded and mixed-case dots.
            ("/public/%2e%2e/internal", "/internal"),
            ("/public/%2E%2E/internal", "/internal"),
            ("/public/.%2e/internal", "/internal"),
            ("/public/%2e./internal", "/internal"),
            ("/public/%2e/internal", "/public/internal"),
            // Double encoding stays what it is.
            ("/public/%252e%252e/internal", "/public/%252e%252e/internal"),
            ("/public/%25%32%65", "/public/%252e"),
            // Other unreserved escapes decoded, reserved ones kept in upper case.
            ("/%41%62c%7e%2D%5f", "/Abc~-_"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%5cb", "/a%5Cb"),
            ("/a%3bb", "/a%3Bb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%20x", "/%20x"),
            // Empty segments merged, a trailing slash kept.
            ("//", "/"),
            ("//internal", "/internal"),
            ("/a//b///c", "/a/b/c"),
            ("/a//", "/a/"),
            ("/a/.//../b", "/b"),
            // `;` parameters are part of a segment.
            ("/public;x/../internal", "/internal"),
            ("/a;.;/b", "/a;.;/b"),
            ("/;jsessionid=1/x", "/;jsessionid=1/x"),
        ];
        for (input, want) in ok {
            assert_eq!(norm(input).as_deref(), Ok(*want), "{input}");
        }
        let refused: &[(&str, PathError)] = &[
            ("/..", AboveRoot),
            ("/../a", AboveRoot),
            ("/a/../..", AboveRoot),
            ("/%2e%2e/x", AboveRoot),
            ("/a/%2E%2e/%2e./b", AboveRoot),
            ("/a%", InvalidEscape),
            ("/a%2", InvalidEscape),
            ("/a%zz", InvalidEscape),
            ("/a%g1", InvalidEscape),
            ("/a%%32%65", InvalidEscape),
            ("/a%00b", EncodedNul),
            ("/a\\b", Backslash),
            ("/public\\..\\internal", Backslash),
            ("/public/..;/internal", AmbiguousDotSegment),
            ("/public/..;x=1/internal", AmbiguousDotSegment),
            ("/public/.;/internal", AmbiguousDotSegment),
            ("/public/..%3b/internal", AmbiguousDotSegment),
            ("/public/%2e%2e%3B/internal", AmbiguousDotSegment),
            ("/public/..%2finternal", AmbiguousDotSegment),
            ("/public/a%2F..%2F..%2Finternal", AmbiguousDotSegment),
            ("/public/..%5Cinternal", AmbiguousDotSegment),
            ("public", NotAbsolute),
            ("", NotAbsolute),
        ];
        for (input, want) in refused {
            assert_eq!(norm(input), Err(*want), "{input}");
        }
    }

    #[test]
    fn options_change_slashes() {
        let keep_slashes = PathOptions {
            merge_slashes: false,
            ..KEEP
        };
        assert_eq!(normalize("/a//b", keep_slashes).unwrap(), "/a//b");
        assert_eq!(normalize("/a//../b", keep_slashes).unwrap(), "/a/b");
        assert_eq!(normalize("//", keep_slashes).unwrap(), "//");
        let reject = PathOptions {
            encoded_slashes: EncodedSlashes::Reject,
            ..KEEP
        };
        assert_eq!(normalize("/a%2fb", reject), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%5Cb", reject), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%252fb", reject).unwrap(), "/a%252fb");
    }

    #[test]
    fn routing_keys_drop_parameters() {
        for (normal, key) in [
            ("/a/b", "/a/b"),
            ("/internal;x=1/secret", "/internal/secret"),
            ("/a;jsessionid=1", "/a"),
            ("/;x/internal", "/internal"),
            ("/a/;x", "/a/"),
            ("/a;b;c/d;e", "/a/d"),
            ("/", "/"),
        ] {
            assert_eq!(routing_key(normal, KEEP), key, "{normal}");
        }
        let keep_slashes = PathOptions {
            merge_slashes: false,
            ..KEEP
        };
        assert_eq!(routing_key("/;x/internal", keep_slashes), "//internal");
        assert!(matches!(routing_key("/a/b", KEEP), Cow::Borrowed(_)));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/a/b", "/api/v1/users;x", "/.well-known/x", "/a%2Fb"] {
            assert!(matches!(normalize(path, KEEP), Ok(Cow::Borrowed(_))), "{path}");
        }
        assert!(matches!(normalize("/a/./b", KEEP), Ok(Cow::Owned(_))));
    }
}
