//! Which route holds each route name and each host + path matcher. Every source of routes
//! (the file, CanaryRoutes, Ingresses, and Gateway API routes next) asks here before adding
//! one, so a clash is refused and reported, never merged: one hash lookup per name and per
//! host, never a scan of the routes already held.

use std::collections::HashMap;
use std::fmt;

use crate::{HostPattern, Route};

/// One host (or any host) with a path prefix (or an exact path): what a request is matched on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Matcher {
    /// The host pattern; `None` for a route without hosts (any host).
    pub host: Option<HostPattern>,
    /// The path prefix, or the exact path.
    pub path: String,
    /// `path` is exact rather than a prefix.
    pub exact: bool,
}

impl Matcher {
    /// The matchers of a route with `hosts` (any host when empty) and `path`.
    pub fn of(hosts: &[HostPattern], path: &str, exact: bool) -> Vec<Matcher> {
        let matcher = |host| Matcher {
            host,
            path: path.to_string(),
            exact,
        };
        if hosts.is_empty() {
            vec![matcher(None)]
        } else {
            hosts.iter().cloned().map(|h| matcher(Some(h))).collect()
        }
    }

    /// The matchers of `route`.
    pub fn of_route(route: &Route) -> Vec<Matcher> {
        Self::of(&route.hosts, &route.path_prefix, route.path_exact)
    }

    /// `app.example` or `any host`.
    pub fn host_shown(&self) -> String {
        self.host
            .as_ref()
            .map_or_else(|| "any host".to_string(), |h| h.to_string())
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} with path {:?}", self.host_shown(), self.path)
    }
}

/// The names and matchers held so far, each with who holds it (`O`: a route index, a source).
#[derive(Debug, Clone)]
pub struct RouteClaims<O> {
    names: HashMap<String, O>,
    matchers: HashMap<Matcher, O>,
}

impl<O> Default for RouteClaims<O> {
    fn default() -> Self {
        Self {
            names: HashMap::new(),
            matchers: HashMap::new(),
        }
    }
}

impl<O: Clone> RouteClaims<O> {
    /// Who holds the route name `name`.
    pub fn name_holder(&self, name: &str) -> Option<&O> {
        self.names.get(name)
    }

    /// Who holds `matcher`.
    pub fn matcher_holder(&self, matcher: &Matcher) -> Option<&O> {
        self.matchers.get(matcher)
    }

    /// Why `route` cannot be added (its name, or the first of its matchers already held).
    pub fn clash(&self, route: &Route) -> Option<String> {
        if self.names.contains_key(&route.name) {
            return Some(format!("a route named {:?} already exists", route.name));
        }
        Matcher::of_route(route)
            .into_iter()
            .find(|m| self.matchers.contains_key(m))
            .map(|m| format!("{m} is already served by another route"))
    }

    /// Holds `name` and `matchers` for `owner`; what is held already keeps its first holder.
    pub fn claim(&mut self, name: &str, matchers: Vec<Matcher>, owner: O) {
        self.names.entry(name.to_string()).or_insert_with(|| owner.clone());
        for m in matchers {
            self.matchers.entry(m).or_insert_with(|| owner.clone());
        }
    }

    /// Holds `route`'s name and matchers for `owner`.
    pub fn claim_route(&mut self, route: &Route, owner: O) {
        self.claim(&route.name, Matcher::of_route(route), owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_each_host_are_held_once() {
        let host = |h: &str| HostPattern::Exact(h.into());
        let mut claims = RouteClaims::default();
        claims.claim(
            "web",
            Matcher::of(&[host("a.example"), host("b.example")], "/", false),
            0,
        );
        claims.claim("api", Matcher::of(&[], "/api", false), 1);
        assert_eq!(claims.name_holder("web"), Some(&0));
        let b = Matcher::of(&[host("b.example")], "/", false).remove(0);
        assert_eq!(claims.matcher_holder(&b), Some(&0));
        assert_eq!(b.to_string(), "b.example with path \"/\"");
        // The same path exact is another matcher; any host is one of its own.
        assert_eq!(
            claims.matcher_holder(&Matcher::of(&[host("b.example")], "/", true)[0]),
            None
        );
        assert_eq!(claims.matcher_holder(&Matcher::of(&[], "/api", false)[0]), Some(&1));
        // A second claim keeps the first holder.
        claims.claim("web", Matcher::of(&[], "/api", false), 2);
        assert_eq!(claims.name_holder("web"), Some(&0));
        assert_eq!(claims.matcher_holder(&Matcher::of(&[], "/api", false)[0]), Some(&1));
    }
}
