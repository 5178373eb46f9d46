//! Route matching: which configured route takes a request.
//!
//! Most specific wins: a route that names the request's host beats one that does not,
//! and among those the longest matching path prefix wins. The table is built once at
//! start-up; a lookup is a host hash probe and a scan of that host's prefixes, longest
//! first, so it allocates nothing.

use std::collections::HashMap;

use crate::config::RouteConfig;

/// Index of a route in the configuration's route list.
pub type RouteId = usize;

/// The precomputed route table.
#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<String, Vec<(String, RouteId)>>,
    any_host: Vec<(String, RouteId)>,
}

impl Router {
    /// Builds the table from routes in configuration order.
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut router = Router::default();
        for (id, r) in routes.iter().enumerate() {
            let entry = (r.path_prefix.clone(), id);
            match &r.host {
                Some(h) => router.by_host.entry(h.clone()).or_default().push(entry),
                None => router.any_host.push(entry),
            }
        }
        // Longest prefix first; the sort is stable so file order breaks ties.
        let by_len = |a: &(String, RouteId), b: &(String, RouteId)| b.0.len().cmp(&a.0.len());
        router.any_host.sort_by(by_len);
        for list in router.by_host.values_mut() {
            list.sort_by(by_len);
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
                if let Some(found) = hit.and_then(|list| scan(list, path)) {
                    return Some(found);
                }
            }
        }
        scan(&self.any_host, path)
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
    fn no_match_is_none() {
        let r = router("[[routes]]\nname='a'\nmatch={path_prefix='/a'}\nupstream='http://x'\n");
        assert_eq!(r.find(None, "/b"), None);
        assert_eq!(r.find(Some("h"), "/a/b"), Some(0));
    }
}
