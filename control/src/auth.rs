//! Bearer tokens of the control API: `NAME ROLE TOKEN` per line, compared in constant time.

use std::path::Path;

use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// GET only.
    Read,
    /// Everything.
    Write,
}

/// One configured token.
#[derive(Clone)]
pub struct Token {
    /// Its name, as written to the audit trail.
    pub name: String,
    /// Its role.
    pub role: Role,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The token set; empty means the API is open (allowed only on loopback).
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Token>);

/// A malformed tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("admin.tokens_file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A line is not `NAME ROLE TOKEN`.
    #[error("admin.tokens_file {path} line {line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        message: String,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No valid token: 401.
    Unauthenticated,
    /// A read token on a write call: 403.
    Forbidden,
}

impl Tokens {
    /// Reads and checks a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, message)| TokensError::Line {
            path: shown,
            line,
            message,
        })
    }

    /// Parses the file's text; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, secret] = fields[..] else {
                return Err((
                    i + 1,
                    format!("expected NAME ROLE TOKEN, found {} field(s)", fields.len()),
                ));
            };
            let role = match role {
                "read" => Role::Read,
                "write" => Role::Write,
                other => return Err((i + 1, format!("role {other:?} is neither read nor write"))),
            };
            if secret.len() < 16 {
                return Err((i + 1, format!("token of {name:?} is shorter than 16 characters")));
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err((i + 1, format!("name {name:?} appears twice")));
            }
            tokens.push(Token {
                name: name.into(),
                role,
                secret: secret.as_bytes().to_vec(),
            });
        }
        Ok(Tokens(tokens))
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks an `Authorization` header for a call that `writes` or not; returns the actor name.
    pub fn check(&self, authorization: Option<&[u8]>, writes: bool) -> Result<String, Denied> {
        if self.0.is_empty() {
            return Ok("anonymous".into());
        }
        let presented = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .ok_or(Denied::Unauthenticated)?;
        // Compare against every token, without an early exit, so timing says nothing about which matched.
        let mut found: Option<&Token> = None;
        for t in &self.0 {
            if bool::from(t.secret.ct_eq(presented)) {
                found = Some(t);
            }
        }
        let token = found.ok_or(Denied::Unauthenticated)?;
        if writes && token.role != Role::Write {
            return Err(Denied::Forbidden);
        }
        Ok(token.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        "# pipeline tokens\nci write 0123456789abcdef0123\n\nviewer read fedcba9876543210fedc  # dashboards\n";

    #[test]
    fn parses_and_checks() {
        let t = Tokens::parse(FILE).unwrap();
        assert_eq!(t.check(Some(b"Bearer 0123456789abcdef0123"), true), Ok("ci".into()));
        assert_eq!(
            t.check(Some(b"Bearer fedcba9876543210fedc"), false),
            Ok("viewer".into())
        );
        assert_eq!(
            t.check(Some(b"Bearer fedcba9876543210fedc"), true),
            Err(Denied::Forbidden)
        );
        for bad in [
            &b""[..],
            b"Bearer ",
            b"Basic 0123456789abcdef0123",
            b"bearer 0123456789abcdef0123",
            b"Bearer 0123456789abcdef012",
            b"Bearer 0123456789abcdef01234",
        ] {
            assert_eq!(
                t.check(Some(bad), false),
                Err(Denied::Unauthenticated),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(t.check(None, false), Err(Denied::Unauthenticated));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        assert_eq!(Tokens::parse("a write 0123456789abcdef\nb\n").unwrap_err().0, 2);
        assert!(Tokens::parse("a admin 0123456789abcdef")
            .unwrap_err()
            .1
            .contains("admin"));
        assert!(Tokens::parse("a read short").unwrap_err().1.contains("shorter"));
        let err = Tokens::parse("a read 0123456789abcdef\na read 0123456789abcdeg").unwrap_err();
        assert_eq!(err.0, 2);
        assert!(!err.1.contains("0123456789"), "the token never appears in errors");
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = Tokens::parse(FILE).unwrap();
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }
}
