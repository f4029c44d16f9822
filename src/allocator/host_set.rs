//! The hosts of one view, sorted by node name, stored so that a change
//! costs in proportion to the change and not to the fleet (pure, no I/O).
//!
//! The hosts live in chunks of at most [`CHUNK_MAX`] shared hosts, and
//! the chunks in one shared list. Replacing, adding or removing a host
//! copies that list (one pointer per chunk) and the one chunk it touches;
//! every other chunk, and every host, is shared with the previous set. At
//! 20,000 hosts that is about 300 pointer copies where a flat list copies
//! 20,000, and the old set's release is as small.
//!
//! Readers that want the hosts as one slice (a pick index, the fleet page)
//! call [`HostSet::as_slice`]: it is flattened once per set, on first use,
//! and shared by every clone of that set, so a stream of updates that no
//! one reads costs nothing but the updates.

use std::sync::{Arc, OnceLock};

use super::Host;

/// Most hosts in one chunk; a chunk that grows past it is split in two.
pub const CHUNK_MAX: usize = 128;
/// A chunk this small is merged into a neighbour when they fit together.
const CHUNK_MIN: usize = CHUNK_MAX / 4;

type Chunk = Arc<[Arc<Host>]>;

/// Hosts sorted by node name, at most one per name. Cloning is O(1).
#[derive(Clone, Default)]
pub struct HostSet {
    /// Never an empty chunk; sorted across chunks.
    chunks: Arc<[Chunk]>,
    len: usize,
    /// The hosts as one slice, built on first use.
    flat: Arc<OnceLock<Box<[Arc<Host>]>>>,
}

impl std::fmt::Debug for HostSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSet")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl PartialEq for HostSet {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl HostSet {
    pub fn new() -> HostSet {
        HostSet::default()
    }

    /// A set of `hosts`; when two share a node name the later one is kept.
    pub fn from_hosts(hosts: impl IntoIterator<Item = Arc<Host>>) -> HostSet {
        let mut hosts: Vec<Arc<Host>> = hosts.into_iter().collect();
        // Stable, so the later of two equal names stays later.
        hosts.sort_by(|a, b| a.node.cmp(&b.node));
        let mut unique: Vec<Arc<Host>> = Vec::with_capacity(hosts.len());
        for host in hosts {
            match unique.last_mut() {
                Some(last) if last.node == host.node => *last = host,
                _ => unique.push(host),
            }
        }
        let len = unique.len();
        let chunks: Vec<Chunk> = unique
            .chunks(CHUNK_MAX / 2)
            .map(|chunk| Chunk::from(chunk.to_vec()))
            .collect();
        HostSet {
            chunks: chunks.into(),
            len,
            flat: Arc::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hosts in node-name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<Host>> + Clone + '_ {
        Iter {
            inner: self.chunks.iter().flat_map(|chunk| chunk.iter()),
            left: self.len,
        }
    }

    /// The hosts in node-name order as one slice, flattened on the first
    /// call for this set (O(n) once) and free afterwards; every clone of
    /// the set shares it.
    pub fn as_slice(&self) -> &[Arc<Host>] {
        self.flat
            .get_or_init(|| self.iter().cloned().collect())
            .as_ref()
    }

    /// The host named `node`.
    pub fn get(&self, node: &str) -> Option<&Arc<Host>> {
        let chunk = &self.chunks[self.chunk_for(node)?];
        let index = chunk
            .binary_search_by(|host| host.node.as_str().cmp(node))
            .ok()?;
        Some(&chunk[index])
    }

    /// Whether both are the same set, not a copy: a reader that derived
    /// something from one set may keep it for the other.
    pub fn same(&self, other: &HostSet) -> bool {
        Arc::ptr_eq(&self.chunks, &other.chunks)
    }

    /// A set with `host` added, or replacing the host of the same name.
    /// Copies the chunk list and one chunk; shares everything else.
    pub fn with(&self, host: Arc<Host>) -> HostSet {
        let Some(at) = self.chunk_for(&host.node).or_else(|| {
            // After the last host: it goes into the last chunk.
            self.chunks.len().checked_sub(1)
        }) else {
            return HostSet::from_hosts([host]);
        };
        let chunk = &self.chunks[at];
        let mut hosts = chunk.to_vec();
        let added = match hosts.binary_search_by(|h| h.node.cmp(&host.node)) {
            Ok(index) => {
                hosts[index] = host;
                false
            }
            Err(index) => {
                hosts.insert(index, host);
                true
            }
        };
        let replacement: Vec<Chunk> = if hosts.len() > CHUNK_MAX {
            let right = hosts.split_off(hosts.len() / 2);
            vec![hosts.into(), right.into()]
        } else {
            vec![hosts.into()]
        };
        self.splice(at..at + 1, replacement, self.len + usize::from(added))
    }

    /// A set without the host named `node` (the same set if there is none).
    pub fn without(&self, node: &str) -> HostSet {
        let Some(at) = self.chunk_for(node) else {
            return self.clone();
        };
        let chunk = &self.chunks[at];
        let Ok(index) = chunk.binary_search_by(|h| h.node.as_str().cmp(node)) else {
            return self.clone();
        };
        let mut hosts = chunk.to_vec();
        hosts.remove(index);
        // A small chunk joins a neighbour when both fit in one, so deletes
        // cannot leave a long list of tiny chunks.
        if hosts.len() < CHUNK_MIN {
            if let Some(next) = self.chunks.get(at + 1) {
                if hosts.len() + next.len() <= CHUNK_MAX {
                    hosts.extend(next.iter().cloned());
                    return self.splice(at..at + 2, vec![hosts.into()], self.len - 1);
                }
            }
            if let Some(previous) = at.checked_sub(1).map(|p| &self.chunks[p]) {
                if hosts.len() + previous.len() <= CHUNK_MAX {
                    let mut joined = previous.to_vec();
                    joined.extend(hosts);
                    return self.splice(at - 1..at + 1, vec![joined.into()], self.len - 1);
                }
            }
        }
        let replacement = if hosts.is_empty() {
            Vec::new()
        } else {
            vec![hosts.into()]
        };
        self.splice(at..at + 1, replacement, self.len - 1)
    }

    /// The chunk that holds `node` or where it would go: the first whose
    /// last host is not before it. `None` when past every chunk.
    fn chunk_for(&self, node: &str) -> Option<usize> {
        let at = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|last| last.node.as_str() < node));
        (at < self.chunks.len()).then_some(at)
    }

    fn splice(&self, range: std::ops::Range<usize>, with: Vec<Chunk>, len: usize) -> HostSet {
        let mut chunks = Vec::with_capacity(self.chunks.len() + with.len());
        chunks.extend_from_slice(&self.chunks[..range.start]);
        chunks.extend(with);
        chunks.extend_from_slice(&self.chunks[range.end..]);
        HostSet {
            chunks: chunks.into(),
            len,
            flat: Arc::default(),
        }
    }

    #[cfg(test)]
    fn chunk_lens(&self) -> Vec<usize> {
        self.chunks.iter().map(|chunk| chunk.len()).collect()
    }
}

impl<'a> IntoIterator for &'a HostSet {
    type Item = &'a Arc<Host>;
    type IntoIter = Box<dyn Iterator<Item = &'a Arc<Host>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<Arc<Host>> for HostSet {
    fn from_iter<I: IntoIterator<Item = Arc<Host>>>(hosts: I) -> Self {
        HostSet::from_hosts(hosts)
    }
}

/// The hosts of a set with their exact count.
#[derive(Clone)]
struct Iter<I> {
    inner: I,
    left: usize,
}

impl<'a, I: Iterator<Item = &'a Arc<Host>>> Iterator for Iter<I> {
    type Item = &'a Arc<Host>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.inner.next()?;
        self.left -= 1;
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<'a, I: Iterator<Item = &'a Arc<Host>>> ExactSizeIterator for Iter<I> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::znode::HostPayload;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn host(node: &str, free: f64) -> Arc<Host> {
        Arc::new(Host {
            node: node.into(),
            payload: HostPayload::parse(
                format!(r#"{{"freeTraffic":{free},"restAddr":"10.0.0.1:80"}}"#).as_bytes(),
            )
            .unwrap(),
        })
    }

    fn contents(set: &HostSet) -> Vec<(String, f64)> {
        set.iter()
            .map(|h| (h.node.clone(), h.payload.free_traffic))
            .collect()
    }

    #[test]
    fn keeps_hosts_sorted_and_unique_and_finds_them() {
        let set = HostSet::new()
            .with(host("c", 1.0))
            .with(host("a", 2.0))
            .with(host("b", 3.0))
            .with(host("a", 4.0));
        assert_eq!(
            contents(&set),
            vec![("a".into(), 4.0), ("b".into(), 3.0), ("c".into(), 1.0)]
        );
        assert_eq!(set.len(), 3);
        assert_eq!(set.get("b").unwrap().payload.free_traffic, 3.0);
        assert!(set.get("d").is_none());
        let set = set.without("b").without("zz");
        assert_eq!(contents(&set), vec![("a".into(), 4.0), ("c".into(), 1.0)]);
        assert_eq!(set.as_slice().len(), 2);
        assert_eq!(set.iter().len(), 2);
        let empty = set.without("a").without("c");
        assert!(empty.is_empty());
        assert!(empty.chunk_lens().is_empty(), "no empty chunk is kept");
    }

    #[test]
    fn an_update_copies_one_chunk_and_shares_the_rest() {
        let set = HostSet::from_hosts((0..20_000).map(|i| host(&format!("h{i:05}"), 1.0)));
        assert!(set.chunk_lens().iter().all(|&len| len <= CHUNK_MAX));
        let next = set.with(host("h10000", 2.0));
        let changed = set
            .chunks
            .iter()
            .zip(next.chunks.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert_eq!(changed, 1, "one chunk copied");
        assert_eq!(next.get("h10000").unwrap().payload.free_traffic, 2.0);
        assert!(Arc::ptr_eq(
            set.get("h00001").unwrap(),
            next.get("h00001").unwrap()
        ));
        assert!(!set.same(&next));
        assert!(next.same(&next.clone()));
    }

    #[test]
    fn the_flattened_slice_is_built_once_and_shared_by_clones() {
        let set = HostSet::from_hosts((0..300).map(|i| host(&format!("h{i:03}"), 1.0)));
        let clone = set.clone();
        assert!(std::ptr::eq(set.as_slice(), clone.as_slice()));
        let changed = set.with(host("h999", 1.0));
        assert_eq!(changed.as_slice().len(), 301);
        assert_eq!(set.as_slice().len(), 300, "the old set is unchanged");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u16, u8),
        Remove(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..600, any::<u8>()).prop_map(|(n, v)| Op::Put(n, v)),
            (0u16..600).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_sorted_map(
            initial in proptest::collection::vec((0u16..600, any::<u8>()), 0..400),
            ops in proptest::collection::vec(op(), 0..600),
        ) {
            let mut model = BTreeMap::new();
            for (n, v) in &initial {
                model.insert(format!("n{n:03}"), f64::from(*v));
            }
            let mut set = HostSet::from_hosts(
                initial.iter().map(|(n, v)| host(&format!("n{n:03}"), f64::from(*v))),
            );
            for op in ops {
                match op {
                    Op::Put(n, v) => {
                        let node = format!("n{n:03}");
                        set = set.with(host(&node, f64::from(v)));
                        model.insert(node, f64::from(v));
                    }
                    Op::Remove(n) => {
                        let node = format!("n{n:03}");
                        set = set.without(&node);
                        model.remove(&node);
                    }
                }
                prop_assert_eq!(set.len(), model.len());
                prop_assert!(set.chunk_lens().iter().all(|&len| (1..=CHUNK_MAX).contains(&len)));
            }
            let expected: Vec<(String, f64)> = model.into_iter().collect();
            prop_assert_eq!(contents(&set), expected.clone());
            let flat: Vec<(String, f64)> = set
                .as_slice()
                .iter()
                .map(|h| (h.node.clone(), h.payload.free_traffic))
                .collect();
            prop_assert_eq!(flat, expected.clone());
            for (node, free) in &expected {
                prop_assert_eq!(set.get(node).map(|h| h.payload.free_traffic), Some(*free));
            }
            // Chunks never degrade into many tiny ones: at most about
            // twice as many as full ones would need, plus one.
            prop_assert!(set.chunk_lens().len() <= 2 * set.len().div_ceil(CHUNK_MIN).max(1));
        }
    }
}
