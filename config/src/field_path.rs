//! Where a field is, written in the words of the document it came from.
//!
//! Validation names fields in snake_case (the config file's words); a path built for a
//! camelCase document (a CanaryRoute's `spec`) renders each name as it was written there, so
//! errors need no rewriting afterwards.

use std::borrow::Cow;
use std::fmt;

/// How the source document spells field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldCase {
    /// `max_error_rate`: the config file.
    Snake,
    /// `maxErrorRate`: Kubernetes objects.
    Camel,
}

/// The path of a field below a root such as `routes[2]` or `CanaryRoute prod/web: spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    case: FieldCase,
}

impl FieldPath {
    /// A root; fields below it are spelled in `case`.
    pub fn new(root: impl Into<String>, case: FieldCase) -> Self {
        Self {
            text: root.into(),
            case,
        }
    }

    /// The field `snake_name` below this path (`routes[0]` → `routes[0].path_prefix`).
    pub fn field(&self, snake_name: &str) -> FieldPath {
        let name = self.word(snake_name);
        let text = if self.text.is_empty() {
            name.into_owned()
        } else {
            format!("{}.{name}", self.text)
        };
        Self { text, case: self.case }
    }

    /// The item `i` of the list at this path.
    pub fn index(&self, i: usize) -> FieldPath {
        Self {
            text: format!("{}[{i}]", self.text),
            case: self.case,
        }
    }

    /// A field name as the source spells it, for messages that mention a sibling field.
    pub fn word<'a>(&self, snake_name: &'a str) -> Cow<'a, str> {
        match self.case {
            FieldCase::Snake => Cow::Borrowed(snake_name),
            FieldCase::Camel if !snake_name.contains('_') => Cow::Borrowed(snake_name),
            FieldCase::Camel => {
                let mut out = String::with_capacity(snake_name.len());
                let mut upper = false;
                for c in snake_name.chars() {
                    if c == '_' {
                        upper = true;
                    } else if upper {
                        out.push(c.to_ascii_uppercase());
                        upper = false;
                    } else {
                        out.push(c);
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// The rendered path.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for FieldPath {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl From<FieldPath> for String {
    fn from(path: FieldPath) -> String {
        path.text
    }
}

impl From<&FieldPath> for String {
    fn from(path: &FieldPath) -> String {
        path.text.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_render_in_the_sources_case() {
        let file = FieldPath::new("routes[1]", FieldCase::Snake);
        assert_eq!(
            file.field("rollout").field("max_latency_p99").as_str(),
            "routes[1].rollout.max_latency_p99"
        );
        let crd = FieldPath::new("CanaryRoute prod/web: spec", FieldCase::Camel);
        assert_eq!(
            crd.field("stable").field("endpoints").index(2).as_str(),
            "CanaryRoute prod/web: spec.stable.endpoints[2]"
        );
        assert_eq!(
            crd.field("rollout").field("failures_before_abort").as_str(),
            "CanaryRoute prod/web: spec.rollout.failuresBeforeAbort"
        );
        assert_eq!(crd.word("header_value"), "headerValue");
        assert_eq!(file.word("header_value"), "header_value");
        assert_eq!(FieldPath::new("", FieldCase::Snake).field("listen").as_str(), "listen");
    }
}
