//! Route matching: which configured route takes a request.
//!
//! Most specific wins: a route that names the request's host beats one that does not,
//! and among those the longest matching path prefix wins. The table is built once at
//! start-up. A lookup is a host hash probe, then a hash probe on the path's first
//! segment, then a longest-first scan of only the prefixes under that segment — so a
//! thousand routes cost about what one does — and it allocates nothing.

use std::collections::HashMap;

use crate::config::RouteConfig;

/// Index of a route in the configuration's route list.
pub type RouteId = usize;

/// The precomputed route table.
#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<String, Prefixes>,
    any_host: Prefixes,
}

/// The path prefixes of one host.
#[derive(Debug, Default)]
struct Prefixes {
    /// Prefixes holding a whole first segment (`/api/…`), by that segment, longest
    /// first. Only paths whose first segment is that one can match them.
    by_segment: HashMap<String, Vec<(String, RouteId)>>,
    /// Prefixes shorter than a whole first segment (`/`, `/ap`), longest first. Any
    /// match in `by_segment` is longer than these, so they are only the fallback.
    short: Vec<(String, RouteId)>,
}

impl Prefixes {
    fn push(&mut self, prefix: String, id: RouteId) {
        match first_segment(&prefix) {
            Some(seg) => self
                .by_segment
                .entry(seg.to_string())
                .or_default()
                .push((prefix, id)),
            None => self.short.push((prefix, id)),
        }
    }

    fn sort(&mut self) {
        // Longest prefix first; the sort is stable so file order breaks ties.
        let by_len = |a: &(String, RouteId), b: &(String, RouteId)| b.0.len().cmp(&a.0.len());
        self.short.sort_by(by_len);
        for list in self.by_segment.values_mut() {
            list.sort_by(by_len);
        }
    }

    fn find(&self, path: &str) -> Option<RouteId> {
        first_segment(path)
            .and_then(|seg| self.by_segment.get(seg))
            .and_then(|list| scan(list, path))
            .or_else(|| scan(&self.short, path))
    }
}

/// `api` for `/api/…`: the first segment, only when a `/` follows it.
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    rest.find('/').map(|end| &rest[..end])
}

impl Router {
    /// Builds the table from routes in configuration order.
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut router = Router::default();
        for (id, r) in routes.iter().enumerate() {
            let prefix = r.path_prefix.clone();
            match &r.host {
                Some(h) => router
                    .by_host
                    .entry(h.clone())
                    .or_default()
                    .push(prefix, id),
                None => router.any_host.push(prefix, id),
            }
        }
        router.any_host.sort();
        for p in router.by_host.values_mut() {
            p.sort();
        }
        router
    }

    /// The route for a request with this host (any case, port allowed) and path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<RouteId> {
        if let Some(host) = host {
            if !self.by_host.is_empty() {
                let host = strip_port(host);
                let hit = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.by_host.get(&host.to_ascii_lowercase())
                } else {
                    self.by_host.get(host)
                };
                if let Some(found) = hit.and_then(|p| p.find(path)) {
                    return Some(found);
                }
            }
        }
        self.any_host.find(path)
    }
}

fn scan(list: &[(String, RouteId)], path: &str) -> Option<RouteId> {
    list.iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(_, id)| *id)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map(|i| &host[..=i]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn router(text: &str) -> Router {
        Router::new(
            &Config::parse(text, "t", &Overrides::default())
                .unwrap()
                .routes,
        )
    }

    #[test]
    fn most_specific_wins() {
        let r = router(
            r#"
[[routes]]
name = "root"
upstream = "http://a"
[[routes]]
name = "api"
match = { path_prefix = "/api/" }
upstream = "http://b"
[[routes]]
name = "api-v2"
match = { path_prefix = "/api/v2/" }
upstream = "http://c"
[[routes]]
name = "crm-host"
match = { host = "crm.example.com" }
upstream = "http://d"
[[routes]]
name = "crm-api"
match = { host = "crm.example.com", path_prefix = "/api/" }
upstream = "http://e"
"#,
        );
        assert_eq!(r.find(None, "/"), Some(0));
        assert_eq!(r.find(Some("other"), "/api/x"), Some(1));
        assert_eq!(r.find(None, "/api/v2/y"), Some(2));
        assert_eq!(r.find(Some("crm.example.com"), "/x"), Some(3));
        assert_eq!(r.find(Some("CRM.example.com:8443"), "/api/v2/z"), Some(4));
    }

    #[test]
    fn segment_index_agrees_with_a_plain_longest_prefix_scan() {
        let prefixes = [
            "/",
            "/a",
            "/ap",
            "/api",
            "/api/",
            "/api/v1",
            "/api/v1/",
            "/api/v1/users/",
            "/apix/",
            "/b/",
            "/b/c/d/",
            "/services/data/",
            "/services/data/v60.0/",
            "/x/y",
            "/x/",
        ];
        let mut text = String::new();
        for (i, p) in prefixes.iter().enumerate() {
            text.push_str(&format!(
                "[[routes]]\nname='r{i}'\nmatch={{path_prefix='{p}'}}\nupstream='http://x'\n"
            ));
        }
        let routes = Config::parse(&text, "t", &Overrides::default())
            .unwrap()
            .routes;
        let router = Router::new(&routes);
        let naive = |path: &str| {
            let mut best: Option<(usize, RouteId)> = None;
            for (id, r) in routes.iter().enumerate() {
                let len = r.path_prefix.len();
                if path.starts_with(r.path_prefix.as_str()) && best.is_none_or(|(l, _)| len > l) {
                    best = Some((len, id));
                }
            }
            best.map(|(_, id)| id)
        };
        let paths = [
            "/",
            "/a",
            "/ap",
            "/api",
            "/api/",
            "/api/v1",
            "/api/v1/",
            "/api/v1/users/7",
            "/api/v2",
            "/apix",
            "/apix/1",
            "/b",
            "/b/",
            "/b/c",
            "/b/c/d/e",
            "/services/data/v60.0/x",
            "/services/datax",
            "/x/y",
            "/x/yz",
            "/x",
            "/zzz/",
            "//",
            "",
        ];
        for path in paths {
            assert_eq!(router.find(None, path), naive(path), "path {path:?}");
        }
    }

    #[test]
    fn no_match_is_none() {
        let r = router("[[routes]]\nname='a'\nmatch={path_prefix='/a'}\nupstream='http://x'\n");
        assert_eq!(r.find(None, "/b"), None);
        assert_eq!(r.find(Some("h"), "/a/b"), Some(0));
    }
}
