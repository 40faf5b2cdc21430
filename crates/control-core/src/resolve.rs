//! Which cluster guards a request, for [`ControlLayer::dynamic`](crate::ControlLayer::dynamic).

use http::request::Parts;

/// Maps a request to the cluster that guards it.
///
/// `None` means the request belongs to no cluster and passes through unguarded (health
/// checks, the control API itself); `Some(id)` of an unknown cluster is answered with 404.
/// A closure `Fn(&Parts) -> Option<String>` is a resolver; [`PathSegment`] is the usual one.
pub trait ResolveCluster: Send + Sync + 'static {
    /// The cluster id for this request.
    fn resolve(&self, parts: &Parts) -> Option<String>;
}

impl<F> ResolveCluster for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn resolve(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

/// The cluster is the path segment at `index` (0-based, after the leading `/`), e.g.
/// `PathSegment::new(1)` reads `wolf-pack` from `/api/wolf-pack/echo`, the `{cluster}` of a
/// route `/api/{cluster}/echo`. A path without that segment (or with an empty one) belongs
/// to no cluster. Inside a nested router the path is the one that router sees.
///
/// ```
/// use dreamnet_control_core::{PathSegment, ResolveCluster};
///
/// let resolver = PathSegment::new(1);
/// let (parts, ()) = http::Request::get("/api/wolf-pack/echo").body(()).unwrap().into_parts();
/// assert_eq!(resolver.resolve(&parts).as_deref(), Some("wolf-pack"));
/// let (parts, ()) = http::Request::get("/healthz").body(()).unwrap().into_parts();
/// assert_eq!(resolver.resolve(&parts), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathSegment {
    index: usize,
}

impl PathSegment {
    /// The segment at `index`.
    pub const fn new(index: usize) -> Self {
        Self { index }
    }
}

impl ResolveCluster for PathSegment {
    fn resolve(&self, parts: &Parts) -> Option<String> {
        let path = parts.uri.path();
        let segment = path
            .strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .nth(self.index)?;
        (!segment.is_empty()).then(|| segment.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(index: usize, path: &str) -> Option<String> {
        let (parts, ()) = http::Request::get(path).body(()).unwrap().into_parts();
        PathSegment::new(index).resolve(&parts)
    }

    #[test]
    fn reads_the_segment_or_nothing() {
        assert_eq!(resolve(1, "/api/alpha/echo").as_deref(), Some("alpha"));
        assert_eq!(resolve(1, "/api/alpha").as_deref(), Some("alpha"));
        assert_eq!(resolve(0, "/alpha?x=1").as_deref(), Some("alpha"));
        assert_eq!(resolve(1, "/api/"), None);
        assert_eq!(resolve(1, "/api"), None);
        assert_eq!(resolve(1, "/"), None);
    }
}
