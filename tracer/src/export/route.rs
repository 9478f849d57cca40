//! Route templating and the per-service cardinality budget.
//!
//! Input: request paths from the protocol parsers (`protocols::Exchange::path`,
//! query already removed) and the service name the daemon resolved for the
//! traced process. Output: a low-cardinality `http_route` label value for
//! `metrics`.
//!
//! Raw paths carry ids (`/users/123`), so using them as labels would create one
//! time series per user. [`template`] replaces id-like segments with `{id}`;
//! [`RouteBudget`] then caps how many distinct routes each service may have,
//! because heuristics miss some ids (slugs, names) and a scanner hitting random
//! URLs must not be able to grow the daemon's memory without bound.
//!
//! Templating rules, applied to each '/'-separated segment:
//! - all ASCII digits → `{id}`;
//! - a UUID (8-4-4-4-12 hex digits, any case) → `{id}`;
//! - hex digits only, 16 or more → `{id}`;
//! - hex digits only, 8 or more, with at least one decimal digit → `{id}`
//!   (so `deadbeef` or `facade42`-like words need a digit to be taken as ids);
//! - 16 or more token characters (ASCII letters, digits, `-_.~=+%`), with at
//!   least one letter and at least 2 digits → `{id}` (API keys, base64 tokens,
//!   hashed asset names);
//! - an `@` (or `%40`) anywhere → `{id}` (email addresses, user names);
//! - a JWT (`eyJ…` then two more base64url parts joined by `.`) → `{id}`;
//! - 16 or more token characters that end in base64 padding (`=`, `%3D`) or
//!   mix `+` with both letter cases → `{id}` (base64 blobs);
//! - 16 or more token characters that look random rather than written: at
//!   least a third of the letters are capitals that follow another letter
//!   (`sYqWbQkLmNvXzRtP`, where camel case such as `GetUserPreferences` has
//!   one per word), or, in a segment of letters and digits only with 12 or
//!   more letters, fewer than a quarter of them are vowels
//!   (`kqzvxwpmtrbnlhgf`; words run near 40%) → `{id}`;
//! - anything else is kept verbatim.
//!
//! The same rules mask the paths `tracer watch` prints, so what an operator
//! sees on a terminal holds no more personal data than the metrics do. They
//! are heuristics: a segment they miss still counts against the route budget
//! below, which bounds what a miss can cost.
//!
//! Empty segments are dropped (`//a/` → `/a`), an empty result is `/`. Anything
//! after `?` or `#` is discarded even though the parser already removes it,
//! because a query string in a label would defeat every other rule. An
//! absolute-form target (`http://host/p`, sent to proxies) loses its scheme and
//! authority. `*` (the `OPTIONS *` target) stays `*`.
//!
//! Length cap: a route longer than [`MAX_ROUTE_LEN`] bytes keeps as many whole
//! leading segments as fit and ends in `/**` (the same glob as
//! [`OVERFLOW_ROUTE`]: "something below here"), so it never exceeds the cap.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

/// The route label of requests that did not fit their service's budget.
pub const OVERFLOW_ROUTE: &str = "/**";

/// Replacement for a segment recognised as an identifier.
pub const ID_SEGMENT: &str = "{id}";

/// Longest route [`template`] returns, in bytes.
pub const MAX_ROUTE_LEN: usize = 128;

/// Suffix of a route cut at [`MAX_ROUTE_LEN`].
const CUT_SUFFIX: &str = "/**";

/// Turns a request path (query already removed) into a low-cardinality route.
///
/// See the module documentation for the rules. Never panics, never returns an
/// empty string, and the result is at most [`MAX_ROUTE_LEN`] bytes.
pub fn template(path: &str) -> String {
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_matches(|c: char| c.is_ascii_whitespace());
    if path == "*" {
        return "*".to_owned();
    }
    let path = strip_scheme_and_authority(path);

    let mut out = String::with_capacity(path.len().clamp(1, MAX_ROUTE_LEN));
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let segment = if is_id(segment) { ID_SEGMENT } else { segment };
        if out.len() + 1 + segment.len() > MAX_ROUTE_LEN {
            // Keep whole segments only, and leave room for the suffix, so the
            // cut route is still a prefix of the real one.
            while out.len() + CUT_SUFFIX.len() > MAX_ROUTE_LEN {
                match out.rfind('/') {
                    Some(i) => out.truncate(i),
                    None => out.clear(),
                }
            }
            out.push_str(CUT_SUFFIX);
            return out;
        }
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `http://host:80/a/b` → `/a/b`; anything else is returned unchanged.
fn strip_scheme_and_authority(path: &str) -> &str {
    if path.starts_with('/') {
        return path;
    }
    match path.find("://") {
        Some(i)
            if i > 0
                && path[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) =>
        {
            let rest = &path[i + 3..];
            rest.find('/').map_or("", |j| &rest[j..])
        }
        _ => path,
    }
}

/// Whether a path segment looks like an identifier (see the module rules).
fn is_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == bytes.len() {
        return true;
    }
    if is_uuid(bytes) {
        return true;
    }
    let all_hex = bytes.iter().all(u8::is_ascii_hexdigit);
    if all_hex && (bytes.len() >= 16 || (bytes.len() >= 8 && digits >= 1)) {
        return true;
    }
    if names_someone(bytes) || is_jwt(bytes) {
        return true;
    }
    let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
    bytes.len() >= 16
        && letters > 0
        && bytes.iter().all(|&b| is_token_char(b))
        && (digits >= 2 || is_base64_blob(bytes) || looks_random(bytes, letters))
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'=' | b'+' | b'%')
}

/// An `@`, plain or percent-encoded: an email address or a user name.
fn names_someone(bytes: &[u8]) -> bool {
    bytes.contains(&b'@') || bytes.windows(3).any(|w| w.eq_ignore_ascii_case(b"%40"))
}

/// Header, payload and signature, base64url, joined by dots; the header is
/// JSON, so it starts with `eyJ` (`{"`). The signature is empty for `alg: none`.
fn is_jwt(bytes: &[u8]) -> bool {
    let base64url = |part: &[u8]| {
        part.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = bytes.split(|&b| b == b'.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            header.starts_with(b"eyJ")
                && !payload.is_empty()
                && base64url(header)
                && base64url(payload)
                && base64url(signature)
        }
        _ => false,
    }
}

/// Base64 padding at the end, or `+` among both letter cases.
fn is_base64_blob(bytes: &[u8]) -> bool {
    let padded = bytes.ends_with(b"=")
        || bytes
            .get(bytes.len().saturating_sub(3)..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(b"%3D"));
    let mixed_case =
        bytes.iter().any(u8::is_ascii_lowercase) && bytes.iter().any(u8::is_ascii_uppercase);
    padded || (bytes.contains(&b'+') && mixed_case)
}

/// Letters drawn at random rather than written: many capitals inside runs of
/// letters, or few vowels.
fn looks_random(bytes: &[u8], letters: usize) -> bool {
    let inner_capitals = bytes
        .windows(2)
        .filter(|w| w[0].is_ascii_alphabetic() && w[1].is_ascii_uppercase())
        .count();
    let has_lowercase = bytes.iter().any(u8::is_ascii_lowercase);
    let vowels = bytes
        .iter()
        .filter(|b| matches!(b.to_ascii_lowercase(), b'a' | b'e' | b'i' | b'o' | b'u'))
        .count();
    // Only letters and digits for the vowel test: a separator means words
    // (`chunk-vendors.js`), whose consonants run together at the joints.
    let plain = bytes.iter().all(u8::is_ascii_alphanumeric);
    (has_lowercase && inner_capitals * 3 >= letters)
        || (plain && letters >= 12 && vowels * 4 < letters)
}

/// 8-4-4-4-12 hex digits separated by '-'.
fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A bounded set of keys per service: the first `max_per_service` distinct keys
/// of each of the first `max_services` services are admitted, the rest are not.
///
/// Memory is bounded by `max_services * max_per_service` keys. Admission is
/// permanent (nothing is ever forgotten), so the answer for a given
/// (service, key) never changes once given: callers may cache it.
#[derive(Debug)]
pub struct KeyBudget<K> {
    max_per_service: usize,
    max_services: usize,
    services: HashMap<Box<str>, HashSet<K>>,
}

impl<K: Hash + Eq> KeyBudget<K> {
    /// A budget of `max_per_service` keys for each of up to `max_services`
    /// services. Services beyond `max_services` have no budget at all.
    pub fn new(max_per_service: usize, max_services: usize) -> Self {
        Self {
            max_per_service,
            max_services,
            services: HashMap::new(),
        }
    }

    /// Returns the stored key equal to `key` if `service` already has it or
    /// still has room for it (then it is stored, built by `make`); `None` if
    /// it must be folded into the overflow value.
    pub fn admit<Q>(&mut self, service: &str, key: &Q, make: impl FnOnce() -> K) -> Option<&K>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.services.contains_key(service) {
            if self.services.len() >= self.max_services || self.max_per_service == 0 {
                return None;
            }
            self.services.insert(service.into(), HashSet::new());
        }
        let keys = self.services.get_mut(service)?;
        if !keys.contains(key) {
            if keys.len() >= self.max_per_service {
                return None;
            }
            keys.insert(make());
        }
        keys.get(key)
    }

    /// Number of services holding a budget.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Number of keys admitted for `service`.
    pub fn len(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, HashSet::len)
    }

    /// Whether `service` has no admitted key.
    pub fn is_empty(&self, service: &str) -> bool {
        self.len(service) == 0
    }
}

/// The label to use for one request's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The templated route, or [`OVERFLOW_ROUTE`]. Shared with the budget, so
    /// cloning it does not allocate.
    pub route: Arc<str>,
    /// The route did not fit the service's budget and was folded into
    /// [`OVERFLOW_ROUTE`]; the caller counts it.
    pub overflowed: bool,
}

/// Per-service cap on distinct routes; services beyond `max_services` share
/// [`OVERFLOW_ROUTE`] for every request.
#[derive(Debug)]
pub struct RouteBudget {
    budget: KeyBudget<Arc<str>>,
    overflow: Arc<str>,
}

impl RouteBudget {
    /// Holds at most `max_routes_per_service` routes for each of at most
    /// `max_services` services.
    pub fn new(max_routes_per_service: usize, max_services: usize) -> Self {
        Self {
            budget: KeyBudget::new(max_routes_per_service, max_services),
            overflow: Arc::from(OVERFLOW_ROUTE),
        }
    }

    /// Returns the route to use as a label: `route` if the service has seen it
    /// or still has budget, else [`OVERFLOW_ROUTE`] with `overflowed` set.
    pub fn admit(&mut self, service: &str, route: String) -> Admitted {
        match self
            .budget
            .admit(service, route.as_str(), || Arc::from(route.as_str()))
        {
            Some(stored) => Admitted {
                route: Arc::clone(stored),
                overflowed: false,
            },
            None => Admitted {
                route: Arc::clone(&self.overflow),
                overflowed: true,
            },
        }
    }

    /// Number of distinct routes admitted for `service`.
    pub fn routes(&self, service: &str) -> usize {
        self.budget.len(service)
    }

    /// Number of services holding a route budget.
    pub fn services(&self) -> usize {
        self.budget.services()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(
            template("/users/123/orders/550e8400-e29b-41d4-a716-446655440000"),
            "/users/{id}/orders/{id}"
        );
        assert_eq!(template("/v1/api"), "/v1/api");
        assert_eq!(template("/static/app.js"), "/static/app.js");
    }

    #[test]
    fn digits() {
        assert_eq!(template("/items/0"), "/items/{id}");
        assert_eq!(template("/a/42/b/99999999999999999999"), "/a/{id}/b/{id}");
        assert_eq!(template("/v2"), "/v2");
    }

    #[test]
    fn uuid_any_case() {
        assert_eq!(
            template("/x/550E8400-E29B-41D4-A716-446655440000"),
            "/x/{id}"
        );
        // Wrong grouping is not a UUID, but still a token (letters, digits,
        // 16+ token characters).
        assert_eq!(
            template("/x/550e8400e29b-41d4-a716-4466554400000"),
            "/x/{id}"
        );
        assert_eq!(
            template("/x/notauuid-with-some-more-wordsinside"),
            "/x/notauuid-with-some-more-wordsinside"
        );
    }

    #[test]
    fn long_hex() {
        assert_eq!(template("/blob/abcdefabcdefabcd"), "/blob/{id}"); // 16 hex, no digit
        assert_eq!(template("/blob/abcdefabcdefabc"), "/blob/abcdefabcdefabc"); // 15
        assert_eq!(
            template("/commit/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            "/commit/{id}"
        );
    }

    #[test]
    fn short_hex_needs_a_digit() {
        assert_eq!(template("/c/cafe1234"), "/c/{id}");
        assert_eq!(template("/c/deadbeef"), "/c/deadbeef");
        assert_eq!(template("/c/cafe123"), "/c/cafe123"); // 7 chars
        assert_eq!(template("/c/feed"), "/c/feed");
    }

    #[test]
    fn tokens() {
        assert_eq!(template("/t/aB3dE5fG7hJ9kL1mN"), "/t/{id}");
        assert_eq!(template("/assets/main.3f9a8b7c1d2e.js"), "/assets/{id}");
        assert_eq!(template("/k/sk_live_4eC39HqLyjWDarjtT1zdp7dc"), "/k/{id}");
        // One digit is a name, not a token.
        assert_eq!(
            template("/docs/getting-started-v2"),
            "/docs/getting-started-v2"
        );
        // No letters: not all digits either (dashes), not a token.
        assert_eq!(template("/d/2024-01-01-12-00-00"), "/d/2024-01-01-12-00-00");
        // Too short.
        assert_eq!(template("/t/ab12cd34xy"), "/t/ab12cd34xy");
        // Characters outside the token set keep the segment.
        assert_eq!(template("/t/hello!world123456"), "/t/hello!world123456");
    }

    #[test]
    fn personal_data_and_secrets() {
        for secret in [
            "alice.smith@example.org",
            "alice%40example.org",
            "bob@corp",
            // A JWT (alg HS256), and one with alg none (empty signature).
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
            // Base64: padded, and with '+' among both cases.
            "aGVsbG8gd29ybGQ=",
            "c2VjcmV0LXRva2Vu%3D",
            "Zm9v+YmFyQmF6cXV4",
            // Random letters: mixed case, and lowercase without vowels.
            "sYqWbQkLmNvXzRtP",
            "kqzvxwpmtrbnlhgfcd",
        ] {
            assert_eq!(template(&format!("/u/{secret}/x")), "/u/{id}/x", "{secret}");
        }
    }

    #[test]
    fn written_words_stay() {
        for word in [
            "GetUserPreferencesByName",
            "getting-started-guide",
            "internationalization",
            "ListNamespacedPods",
            "c++-programming-guide",
            "release-notes.html",
            "eyJustAWord",
            "chunk-vendors.js",
        ] {
            assert_eq!(template(&format!("/{word}")), format!("/{word}"), "{word}");
        }
    }

    #[test]
    fn empty_and_slashes() {
        assert_eq!(template(""), "/");
        assert_eq!(template("/"), "/");
        assert_eq!(template("//"), "/");
        assert_eq!(template("//a//b/"), "/a/b");
        assert_eq!(template("a/1"), "/a/{id}");
    }

    #[test]
    fn query_and_fragment_dropped() {
        assert_eq!(template("/search?q=1&x=2"), "/search");
        assert_eq!(template("/page#frag"), "/page");
        assert_eq!(template("?only"), "/");
        assert_eq!(template("/a/1?b/2"), "/a/{id}");
    }

    #[test]
    fn absolute_form_and_asterisk() {
        assert_eq!(template("http://example.com:8080/users/7"), "/users/{id}");
        assert_eq!(template("https://example.com"), "/");
        assert_eq!(template("*"), "*");
    }

    #[test]
    fn length_cap_cuts_at_segment_boundary() {
        let long = "/abcdefghij".repeat(20);
        let t = template(&long);
        assert!(t.len() <= MAX_ROUTE_LEN, "{t}");
        assert!(t.ends_with("/**"));
        let kept = t.trim_end_matches("/**");
        assert!(long.starts_with(kept));
        assert!(kept.split('/').skip(1).all(|s| s == "abcdefghij"));

        // A single over-long segment leaves only the glob.
        let one = format!("/{}", "abcdefghij".repeat(50));
        assert_eq!(template(&one), "/**");

        // Exactly at the cap is kept whole.
        let exact = format!("/{}", "o".repeat(MAX_ROUTE_LEN - 1));
        assert_eq!(template(&exact), exact);
    }

    #[test]
    fn odd_input_does_not_panic() {
        for p in [
            "\u{1F600}/1",
            "/é/ü/123",
            "/%00/%ff",
            " / ",
            "/\n/",
            "://",
            "a://b",
        ] {
            let t = template(p);
            assert!(!t.is_empty() && t.len() <= MAX_ROUTE_LEN);
        }
        let multibyte = "/".to_owned() + &"é".repeat(200);
        assert_eq!(template(&multibyte), "/**");
    }

    #[test]
    fn budget_caps_routes_per_service() {
        let mut b = RouteBudget::new(2, 10);
        assert_eq!(b.admit("svc", "/a".into()).route.as_ref(), "/a");
        assert_eq!(b.admit("svc", "/b".into()).route.as_ref(), "/b");
        let third = b.admit("svc", "/c".into());
        assert_eq!(third.route.as_ref(), OVERFLOW_ROUTE);
        assert!(third.overflowed);
        // Known routes keep working after the budget is spent.
        let again = b.admit("svc", "/a".into());
        assert_eq!(again.route.as_ref(), "/a");
        assert!(!again.overflowed);
        // Other services have their own budget.
        assert_eq!(b.admit("other", "/c".into()).route.as_ref(), "/c");
        assert_eq!(b.routes("svc"), 2);
        assert_eq!(b.services(), 2);
    }

    #[test]
    fn budget_caps_services() {
        let mut b = RouteBudget::new(5, 2);
        assert!(!b.admit("s1", "/a".into()).overflowed);
        assert!(!b.admit("s2", "/a".into()).overflowed);
        let s3 = b.admit("s3", "/a".into());
        assert!(s3.overflowed);
        assert_eq!(s3.route.as_ref(), OVERFLOW_ROUTE);
        assert_eq!(b.services(), 2);
        assert_eq!(b.routes("s3"), 0);
    }

    #[test]
    fn budget_zero_routes_folds_everything() {
        let mut b = RouteBudget::new(0, 2);
        assert!(b.admit("s", "/a".into()).overflowed);
        assert_eq!(b.services(), 0);
    }

    #[test]
    fn budget_shares_route_allocation() {
        let mut b = RouteBudget::new(5, 5);
        let first = b.admit("s", "/a".into()).route;
        let second = b.admit("s", "/a".into()).route;
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn key_budget_with_copy_keys() {
        let mut b: KeyBudget<(u32, u16)> = KeyBudget::new(1, 1);
        assert!(b.admit("s", &(1, 80), || (1, 80)).is_some());
        assert!(b.admit("s", &(1, 80), || (1, 80)).is_some());
        assert!(b.admit("s", &(2, 80), || (2, 80)).is_none());
        assert!(b.admit("t", &(1, 80), || (1, 80)).is_none());
        assert_eq!(b.len("s"), 1);
        assert!(b.is_empty("t"));
    }
}
