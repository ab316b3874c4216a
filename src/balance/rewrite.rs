//! Rewriting a logical URL to the endpoint picked for it, with the URLs a service's calls
//! repeat remembered.
//!
//! The `url` crate has no way to change a URL's host and port but to serialize the new ones
//! into it (`set_ip_host` formats the address through `core::fmt`, and each setter copies
//! the URL's tail aside and back): about 2 400 instructions and four allocations for an
//! IPv4 endpoint, a third of everything else the mesh does on a call. Parsing the new URL
//! whole costs more, and so do `Url::join` and `set_path` against a base URL kept per
//! endpoint. Cloning a `Url` costs one allocation and a copy.
//!
//! So each endpoint remembers, in a small table kept with what else is learnt of it (its
//! [`EndpointStats`](super::health::EndpointStats), carried across snapshots while it stays
//! listed), the URLs rewritten to it: the logical URL is the key, the rewritten URL the
//! value, and a call that finds its key gets a clone of it. The rewrite is a pure function
//! of the logical URL and the endpoint's scheme and address, and an entry keeps and checks
//! those too, so a remembered URL is exactly the one the rewrite would make.
//!
//! A URL is remembered the second time in a row its slot sees it, not the first: calls whose
//! URLs never repeat (an id in the path, a nonce in the query) then pay a hash, a shared
//! read of the slot's lock and an atomic load and store per call, not an allocation. An
//! endpoint has [`SLOTS`] slots, each holding one URL, so the memory is bounded whatever the
//! calls; a URL longer than [`MAX_REMEMBERED`] or carrying a password is never kept.

use std::hash::BuildHasher;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::endpoint::{Endpoint, EndpointAddr, Scheme};
use crate::hash::BuildNameHasher;

/// Slots in an endpoint's table. A power of two.
const SLOTS: usize = 4;

/// The longest logical URL, in bytes, an endpoint remembers.
const MAX_REMEMBERED: usize = 512;

/// The URLs rewritten to one endpoint lately.
#[derive(Default)]
pub(crate) struct Rewrites {
    slots: [Slot; SLOTS],
}

/// One URL's place. A lock, not an `ArcSwap`: every endpoint has four, made and dropped with
/// each snapshot that adds or removes it, and an `ArcSwap`'s drop walks every thread's debt
/// list (40 000 of them added 0.6 – 1.1 ms to a 10 000-endpoint update). Reading takes the
/// lock's word shared, as the endpoint's in-flight count already is.
#[derive(Default)]
struct Slot {
    /// The URL this slot remembers.
    kept: RwLock<Option<Box<Rewritten>>>,
    /// The hash of the URL this slot last missed: a URL seen twice in a row is kept.
    missed: AtomicU64,
}

struct Rewritten {
    logical: Box<str>,
    scheme: Option<Scheme>,
    addr: EndpointAddr,
    url: url::Url,
}

/// How a rewrite went; tests read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrote {
    /// The URL was remembered: a clone of it replaced the request's.
    Remembered,
    /// The URL was rewritten, and now it is remembered.
    Kept,
    /// The URL was rewritten and not kept.
    Rewritten,
}

impl std::fmt::Debug for Rewrites {
    // The table holds whole URLs, queries and all: it is not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrites").finish_non_exhaustive()
    }
}

impl Rewrites {
    /// Reads each slot's word, for [`EndpointStats::touch`](super::health::EndpointStats::touch).
    pub(crate) fn touch(&self) -> u64 {
        self.slots
            .iter()
            .fold(0, |all, slot| all ^ slot.missed.load(Ordering::Relaxed))
    }

    /// [`rewrite_keeping`](Self::rewrite_keeping) without keeping the logical URL.
    #[cfg(test)]
    pub(crate) fn rewrite(&self, url: &mut url::Url, endpoint: &Endpoint) -> Rewrote {
        self.rewrite_keeping(url, endpoint, None)
    }

    /// Rewrites `url`'s scheme, host and port to `endpoint`'s, from the table when it
    /// remembers this URL for this endpoint; with `keep`, puts the logical URL there: the
    /// one the request had, moved out when the rewritten URL is a remembered one's clone
    /// (which replaces it whole), a copy when the URL is rewritten in place.
    pub(crate) fn rewrite_keeping(
        &self,
        url: &mut url::Url,
        endpoint: &Endpoint,
        keep: Option<&mut Option<url::Url>>,
    ) -> Rewrote {
        let logical = url.as_str();
        if logical.len() > MAX_REMEMBERED {
            if let Some(keep) = keep {
                *keep = Some(url.clone());
            }
            rewrite(url, endpoint);
            return Rewrote::Rewritten;
        }
        let hash = key_hash(logical);
        let slot = &self.slots[(hash >> 32) as usize % SLOTS];
        // A poisoned lock (a panic while it was held, which nothing here does) is a miss.
        if let Ok(kept) = slot.kept.read()
            && let Some(kept) = kept.as_deref()
            && kept.logical.as_ref() == logical
            && kept.scheme == endpoint.scheme()
            && &kept.addr == endpoint.addr()
        {
            let rewritten = kept.url.clone();
            match keep {
                Some(keep) => *keep = Some(std::mem::replace(url, rewritten)),
                None => *url = rewritten,
            }
            return Rewrote::Remembered;
        }
        // Seen twice in a row: keep it, unless it holds a password. A load before the
        // store, so that calls whose URLs never repeat do not all write one cache line.
        let again = slot.missed.load(Ordering::Relaxed) == hash;
        if !again {
            slot.missed.store(hash, Ordering::Relaxed);
        }
        let logical: Option<Box<str>> = (again && url.password().is_none()).then(|| logical.into());
        if let Some(keep) = keep {
            *keep = Some(url.clone());
        }
        rewrite(url, endpoint);
        match logical {
            Some(logical) => {
                let rewritten = Box::new(Rewritten {
                    logical,
                    scheme: endpoint.scheme(),
                    addr: endpoint.addr().clone(),
                    url: url.clone(),
                });
                // The old entry is dropped after the lock is let go.
                let _old = match slot.kept.write() {
                    Ok(mut kept) => kept.replace(rewritten),
                    Err(_) => return Rewrote::Rewritten,
                };
                Rewrote::Kept
            }
            None => Rewrote::Rewritten,
        }
    }
}

/// The hash of a logical URL. Never 0, the hash a slot that missed nothing holds.
fn key_hash(logical: &str) -> u64 {
    BuildNameHasher::default().hash_one(logical).max(1)
}

/// Rewrites `url`'s scheme (when the endpoint sets one), host and port to `endpoint`'s,
/// keeping the rest.
fn rewrite(url: &mut url::Url, endpoint: &Endpoint) {
    // These setters fail only for URLs that cannot have a host, which the balancer refused
    // before it picked an endpoint.
    if let Some(scheme) = endpoint.scheme() {
        let _ = url.set_scheme(scheme.as_str());
    }
    match endpoint.addr() {
        EndpointAddr::Ip(addr) => {
            let _ = url.set_ip_host(addr.ip());
        }
        EndpointAddr::Host(host, _) => {
            let _ = url.set_host(Some(host));
        }
    }
    let _ = url.set_port(Some(endpoint.addr().port()));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn endpoints() -> Vec<Endpoint> {
        vec![
            Endpoint::new(([10, 0, 0, 1], 8080)),
            Endpoint::new(([10, 0, 0, 1], 8081)),
            Endpoint::new(([10, 0, 0, 2], 8080)),
            Endpoint::new(([10, 0, 0, 1], 8080)).with_scheme(Scheme::Https),
            Endpoint::new("[::1]:9000".parse::<EndpointAddr>().expect("address")),
            Endpoint::new(
                "orders-3.internal:8080"
                    .parse::<EndpointAddr>()
                    .expect("address"),
            ),
            Endpoint::new(
                "orders-4.internal:8080"
                    .parse::<EndpointAddr>()
                    .expect("address"),
            ),
        ]
    }

    const URLS: &[&str] = &[
        "http://orders/v1/items",
        "http://orders/v1/items?id=42",
        "http://orders:9999/v1/items?id=42#top",
        "https://orders/v1/items",
        "http://orders/v1/item%20s?q=a%2Fb&r",
        "http://orders/",
        "http://user@orders/v1/items",
    ];

    fn plain(logical: &str, endpoint: &Endpoint) -> url::Url {
        let mut url = url::Url::parse(logical).expect("url");
        rewrite(&mut url, endpoint);
        url
    }

    #[test]
    fn a_url_is_kept_the_second_time_in_a_row_and_then_remembered() {
        let rewrites = Rewrites::default();
        let endpoint = &endpoints()[0];
        let ways: Vec<Rewrote> = (0..4)
            .map(|_| {
                let mut url = url::Url::parse(URLS[1]).expect("url");
                let way = rewrites.rewrite(&mut url, endpoint);
                assert_eq!(url.as_str(), "http://10.0.0.1:8080/v1/items?id=42");
                way
            })
            .collect();
        assert_eq!(
            ways,
            [
                Rewrote::Rewritten,
                Rewrote::Kept,
                Rewrote::Remembered,
                Rewrote::Remembered
            ]
        );
    }

    #[test]
    fn a_remembered_url_is_for_its_own_endpoint_only() {
        // One table for every endpoint (an endpoint's own table could only meet another
        // endpoint if its stats were carried over to a changed one): entries are checked.
        let rewrites = Rewrites::default();
        let endpoints = endpoints();
        for _ in 0..3 {
            for endpoint in &endpoints {
                let mut url = url::Url::parse(URLS[0]).expect("url");
                rewrites.rewrite(&mut url, &endpoints[0]);
                let mut url = url::Url::parse(URLS[0]).expect("url");
                rewrites.rewrite(&mut url, endpoint);
                assert_eq!(url, plain(URLS[0], endpoint), "for {endpoint:?}");
            }
        }
        // The last entry kept is another endpoint's: the first call misses and keeps its
        // own, the next is served from it.
        let ways: Vec<Rewrote> = (0..2)
            .map(|_| {
                let mut url = url::Url::parse(URLS[0]).expect("url");
                rewrites.rewrite(&mut url, &endpoints[0])
            })
            .collect();
        assert_eq!(ways, [Rewrote::Kept, Rewrote::Remembered]);
    }

    #[test]
    fn long_urls_and_passwords_are_not_kept() {
        let rewrites = Rewrites::default();
        let endpoint = &endpoints()[0];
        let long = format!("http://orders/{}", "a".repeat(MAX_REMEMBERED));
        let secret = "http://user:hunter2@orders/v1/items";
        for logical in [long.as_str(), secret] {
            for _ in 0..3 {
                let mut url = url::Url::parse(logical).expect("url");
                assert_eq!(rewrites.rewrite(&mut url, endpoint), Rewrote::Rewritten);
                assert_eq!(url, plain(logical, endpoint));
            }
        }
        assert!(!format!("{rewrites:?}").contains("hunter2"));
    }

    #[test]
    fn urls_that_never_repeat_are_not_kept() {
        let rewrites = Rewrites::default();
        let endpoint = &endpoints()[0];
        for id in 0..1_000 {
            let logical = format!("http://orders/v1/items/{id}");
            let mut url = url::Url::parse(&logical).expect("url");
            assert_eq!(rewrites.rewrite(&mut url, endpoint), Rewrote::Rewritten);
            assert_eq!(url, plain(&logical, endpoint));
        }
        assert!(
            rewrites
                .slots
                .iter()
                .all(|slot| slot.kept.read().expect("not poisoned").is_none())
        );
    }

    proptest! {
        /// Whatever the order of calls and however they share slots, a rewrite through the
        /// table gives the URL the plain rewrite gives.
        #[test]
        fn the_table_rewrites_as_the_setters_do(
            calls in proptest::collection::vec((0..URLS.len(), 0..7usize), 1..200),
        ) {
            // One table for every endpoint, as above: seven URLs and seven endpoints in
            // four slots, so every part of an entry is compared.
            let rewrites = Rewrites::default();
            let endpoints = endpoints();
            for (u, e) in calls {
                let mut url = url::Url::parse(URLS[u]).expect("url");
                rewrites.rewrite(&mut url, &endpoints[e]);
                prop_assert_eq!(url, plain(URLS[u], &endpoints[e]));
            }
        }
    }
}
