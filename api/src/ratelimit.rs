//! Throttles failed authentication (issue 10, item 4): bad, unknown or missing bearer tokens
//! and unknown enrollment tokens are counted per client address and per token id (the
//! public `lk_<id>_…` part), and a client over its limit gets `429` with `Retry-After`
//! before its token is even looked at. Successful requests are never counted.
//!
//! Each counter is a leaky bucket: every failure adds one, and the bucket drains at `limit`
//! per `window`, so a burst of `limit` failures is allowed and after that one more per
//! `window / limit`. Memory is bounded: at most [`Limits::max_entries`] counters per kind;
//! drained ones are dropped once per window, and when the table is full the least-filled
//! tenth is evicted. This module must never see, keep or log a token's secret part.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Failed authentications one client address may make in a burst (then one per
/// `window / limit`).
pub const DEFAULT_PER_ADDRESS: u32 = 10;
/// Failed authentications with one token id, from anywhere.
pub const DEFAULT_PER_TOKEN: u32 = 5;
/// The window the limits are counted over.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Counters kept per kind (addresses, token ids); about 100 bytes each.
pub const DEFAULT_MAX_ENTRIES: usize = 50_000;

/// The limits in force (see `crate::config` for where they come from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub per_address: u32,
    pub per_token: u32,
    pub window: Duration,
    pub max_entries: usize,
    /// Peers whose `X-Forwarded-For` is believed (reverse proxies in front of the server).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_address: DEFAULT_PER_ADDRESS,
            per_token: DEFAULT_PER_TOKEN,
            window: DEFAULT_WINDOW,
            max_entries: DEFAULT_MAX_ENTRIES,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An address or a network (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_matches(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    prefix == 0 || (net >> shift) == (ip >> shift)
}

/// An IPv4 address written as IPv6 (`::ffff:192.0.2.7`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The unit a client is counted by: its IPv4 address, or the /64 network of its IPv6
/// address (one IPv6 host usually has a whole /64 to pick addresses from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(IpAddr);

impl ClientAddress {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(Ipv6Addr::from(network)))
            }
            v4 => Self(v4),
        }
    }
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the last
/// address in `X-Forwarded-For` (all such headers, in order) that is not a trusted proxy
/// itself (the first one if all are). A proxy appends the address it saw, so entries left
/// of the last untrusted one may be made up by the client and are never believed.
pub fn client_ip<'a>(
    peer: Option<SocketAddr>,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |p| p.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = forwarded_for
        .flat_map(|header| header.split(','))
        .filter_map(|entry| parse_forwarded(entry.trim()))
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(**ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.7:4711`,
/// `[2001:db8::1]:4711`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The public id part of a presented token (`lk_<32 hex>_…`), if it has one. Only the id is
/// read; the rest of the text is not looked at.
pub fn token_id(presented: &str) -> Option<Uuid> {
    let id = presented.strip_prefix("lk_")?.get(..32)?;
    if !id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Uuid::try_parse(id).ok()
}

/// One authentication attempt: who makes it, and with which token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub address: ClientAddress,
    pub token_id: Option<Uuid>,
}

/// Which limit refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedBy {
    Address,
    TokenId,
}

impl LimitedBy {
    fn label(self) -> &'static str {
        match self {
            LimitedBy::Address => "address",
            LimitedBy::TokenId => "token_id",
        }
    }
}

/// An attempt refused without being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub by: LimitedBy,
    /// Whole seconds until one more attempt is allowed (at least 1).
    pub retry_after: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `address` or `token_id`.
    pub limit: &'static str,
}

/// One leaky bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
    /// When a warning about this key was last logged.
    warned: Option<Instant>,
}

/// The buckets of one kind of key, bounded in number.
#[derive(Debug)]
struct Buckets<K> {
    limit: u32,
    window: Duration,
    max_entries: usize,
    entries: HashMap<K, Bucket>,
    swept: Option<Instant>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    fn new(limit: u32, window: Duration, max_entries: usize) -> Self {
        Self {
            limit: limit.max(1),
            window: window.max(Duration::from_secs(1)),
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            swept: None,
        }
    }

    /// Failures drained per second.
    fn rate(&self) -> f64 {
        f64::from(self.limit) / self.window.as_secs_f64()
    }

    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.level - elapsed * self.rate()).max(0.0)
    }

    /// Seconds until `key` may try again, if it may not now.
    fn retry_after(&self, key: &K, now: Instant) -> Option<u64> {
        let bucket = self.entries.get(key)?;
        let over = self.level(bucket, now) - f64::from(self.limit - 1);
        // A hair over the line is still over it (float rounding of the drain).
        (over > 1e-9).then(|| ((over / self.rate()).ceil() as u64).max(1))
    }

    /// Counts a failure; returns whether a warning about `key` is due (it is now over its
    /// limit, and was not warned about within the window).
    fn fail(&mut self, key: K, now: Instant) -> bool {
        let due = self
            .swept
            .is_none_or(|swept| now.saturating_duration_since(swept) >= self.window);
        if due {
            self.sweep(now);
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            self.sweep(now);
            if self.entries.len() >= self.max_entries {
                self.evict(now);
            }
        }
        let level = self.entries.get(&key).map_or(0.0, |b| self.level(b, now));
        let bucket = self.entries.entry(key).or_insert(Bucket {
            level: 0.0,
            at: now,
            warned: None,
        });
        bucket.level = level + 1.0;
        bucket.at = now;
        let over = bucket.level > f64::from(self.limit - 1) + 1e-9;
        let due = bucket
            .warned
            .is_none_or(|warned| now.saturating_duration_since(warned) >= self.window);
        if over && due {
            bucket.warned = Some(now);
        }
        over && due
    }

    /// Drops the drained buckets (once per window, and when the table is full).
    fn sweep(&mut self, now: Instant) {
        let rate = self.rate();
        let window = self.window;
        self.entries.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at);
            // Kept while it still holds failures, or a recent warning (not to log again).
            b.level > elapsed.as_secs_f64() * rate
                || b.warned
                    .is_some_and(|w| now.saturating_duration_since(w) < window)
        });
        self.swept = Some(now);
    }

    /// Makes room when the table is full of live buckets: drops the tenth with the fewest
    /// failures, so a flood of addresses cannot push out the ones over their limit.
    fn evict(&mut self, now: Instant) {
        let mut levels: Vec<(f64, K)> = self
            .entries
            .iter()
            .map(|(key, b)| (self.level(b, now), *key))
            .collect();
        let cut = (levels.len() / 10).max(1);
        levels.select_nth_unstable_by(cut - 1, |a, b| a.0.total_cmp(&b.0));
        for (_, key) in &levels[..cut] {
            self.entries.remove(key);
        }
    }
}

#[derive(Debug)]
struct Tables {
    addresses: Buckets<ClientAddress>,
    tokens: Buckets<Uuid>,
}

/// The failed-authentication limiter shared by every worker. Takes the time it is given, so
/// tests can step it.
pub struct AuthLimiter {
    limits: Limits,
    tables: Mutex<Tables>,
    refused: Family<RefusedLabels, Counter>,
}

impl fmt::Debug for AuthLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for AuthLimiter {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl AuthLimiter {
    pub fn new(limits: Limits) -> Self {
        let tables = Tables {
            addresses: Buckets::new(limits.per_address, limits.window, limits.max_entries),
            tokens: Buckets::new(limits.per_token, limits.window, limits.max_entries),
        };
        Self {
            limits,
            tables: Mutex::new(tables),
            refused: Family::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Attempts refused so far, by the limit that refused them (registered on `/metrics`).
    pub fn refused(&self) -> Family<RefusedLabels, Counter> {
        self.refused.clone()
    }

    /// The attempt a request makes with `presented` (the bearer or enrollment token text, if
    /// any).
    pub fn attempt<'a>(
        &self,
        peer: Option<SocketAddr>,
        forwarded_for: impl Iterator<Item = &'a str>,
        presented: Option<&str>,
    ) -> Attempt {
        Attempt {
            address: ClientAddress::of(client_ip(
                peer,
                forwarded_for,
                &self.limits.trusted_proxies,
            )),
            token_id: presented.and_then(token_id),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err` when the attempt must be refused unchecked: its address or its token id is over
    /// its limit. Counted on `/metrics`; the attempt itself is not counted as a failure.
    pub fn check(&self, attempt: &Attempt, now: Instant) -> Result<(), Limited> {
        let tables = self.tables();
        let by_address = tables
            .addresses
            .retry_after(&attempt.address, now)
            .map(|retry_after| Limited {
                by: LimitedBy::Address,
                retry_after,
            });
        let by_token = attempt
            .token_id
            .and_then(|id| tables.tokens.retry_after(&id, now))
            .map(|retry_after| Limited {
                by: LimitedBy::TokenId,
                retry_after,
            });
        drop(tables);
        let limited = match (by_address, by_token) {
            (Some(a), Some(t)) if t.retry_after > a.retry_after => Some(t),
            (Some(a), _) => Some(a),
            (None, t) => t,
        };
        match limited {
            Some(limited) => {
                self.refused
                    .get_or_create(&RefusedLabels {
                        limit: limited.by.label(),
                    })
                    .inc();
                Err(limited)
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication against the attempt's address and token id; warns in
    /// the log (once per window for each) when one of them is now over its limit.
    pub fn failed(&self, attempt: &Attempt, now: Instant) {
        let mut tables = self.tables();
        let warn_address = tables.addresses.fail(attempt.address, now);
        let warn_token = attempt
            .token_id
            .is_some_and(|id| tables.tokens.fail(id, now));
        drop(tables);
        if warn_address {
            tracing::warn!(
                client = %attempt.address,
                limit = self.limits.per_address,
                window_seconds = self.limits.window.as_secs(),
                "too many failed authentications from this client address: its next attempts \
                 are refused with 429 until the count drains"
            );
        }
        if let (true, Some(token_id)) = (warn_token, attempt.token_id) {
            tracing::warn!(
                %token_id,
                client = %attempt.address,
                limit = self.limits.per_token,
                window_seconds = self.limits.window.as_secs(),
                "too many failed authentications with this token id: attempts with it are \
                 refused with 429 until the count drains, from every address and even with \
                 the right secret"
            );
        }
    }

    /// How many counters are kept (addresses, token ids).
    pub fn tracked(&self) -> (usize, usize) {
        let tables = self.tables();
        (tables.addresses.entries.len(), tables.tokens.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: u32, per_token: u32, max_entries: usize) -> Limits {
        Limits {
            per_address,
            per_token,
            window: Duration::from_secs(60),
            max_entries,
            trusted_proxies: Vec::new(),
        }
    }

    fn from(ip: &str, token: Option<Uuid>) -> Attempt {
        Attempt {
            address: ClientAddress::of(ip.parse().unwrap()),
            token_id: token,
        }
    }

    #[test]
    fn a_client_address_over_its_limit_is_refused_until_its_count_drains() {
        let limiter = AuthLimiter::new(limits(3, 100, 100));
        let start = Instant::now();
        let bad = from("192.0.2.7", None);
        for _ in 0..3 {
            assert_eq!(limiter.check(&bad, start), Ok(()));
            limiter.failed(&bad, start);
        }
        // 3 per 60 s: one more every 20 s.
        assert_eq!(
            limiter.check(&bad, start),
            Err(Limited {
                by: LimitedBy::Address,
                retry_after: 20
            })
        );
        assert_eq!(
            limiter.check(&bad, start + Duration::from_secs(15)),
            Err(Limited {
                by: LimitedBy::Address,
                retry_after: 5
            })
        );
        // Another address is not affected.
        assert_eq!(limiter.check(&from("192.0.2.8", None), start), Ok(()));
        // Drained by one: one more attempt, and after its failure refused again.
        let later = start + Duration::from_secs(20);
        assert_eq!(limiter.check(&bad, later), Ok(()));
        limiter.failed(&bad, later);
        assert!(limiter.check(&bad, later).is_err());
        // A whole window later everything has drained.
        assert_eq!(limiter.check(&bad, later + Duration::from_secs(60)), Ok(()));
        let refused = limiter
            .refused()
            .get_or_create(&RefusedLabels { limit: "address" })
            .get();
        assert_eq!(refused, 3);
    }

    #[test]
    fn a_token_id_over_its_limit_is_refused_from_every_address() {
        let limiter = AuthLimiter::new(limits(100, 2, 100));
        let now = Instant::now();
        let id = Uuid::from_u128(7);
        limiter.failed(&from("192.0.2.1", Some(id)), now);
        limiter.failed(&from("198.51.100.1", Some(id)), now);
        let limited = limiter
            .check(&from("203.0.113.9", Some(id)), now)
            .unwrap_err();
        assert_eq!(limited.by, LimitedBy::TokenId);
        assert_eq!(limited.retry_after, 30);
        // Another token id from the same addresses is fine.
        assert_eq!(
            limiter.check(&from("192.0.2.1", Some(Uuid::from_u128(8))), now),
            Ok(())
        );
    }

    #[test]
    fn successes_are_not_counted() {
        let limiter = AuthLimiter::new(limits(2, 2, 100));
        let now = Instant::now();
        let client = from("192.0.2.7", Some(Uuid::from_u128(1)));
        for _ in 0..100 {
            assert_eq!(limiter.check(&client, now), Ok(()));
        }
        assert_eq!(limiter.tracked(), (0, 0));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses_and_the_worst_are_kept() {
        let limiter = AuthLimiter::new(limits(5, 5, 1000));
        let now = Instant::now();
        let worst = from("198.51.100.200", None);
        for _ in 0..5 {
            limiter.failed(&worst, now);
        }
        for i in 0..20_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            limiter.failed(
                &Attempt {
                    address: ClientAddress::of(IpAddr::V4(ip)),
                    token_id: Some(Uuid::from_u128(u128::from(i))),
                },
                now,
            );
            let (addresses, tokens) = limiter.tracked();
            assert!(addresses <= 1000 && tokens <= 1000, "{addresses} {tokens}");
        }
        assert!(
            limiter.check(&worst, now).is_err(),
            "the attacker is still limited"
        );
        // Once the window has passed, the next failure sweeps the drained counters away.
        let later = now + Duration::from_secs(61);
        limiter.failed(&from("192.0.2.1", Some(Uuid::from_u128(1 << 100))), later);
        assert_eq!(limiter.tracked(), (1, 1));
    }

    #[test]
    fn a_warning_is_due_once_per_window() {
        let mut buckets = Buckets::new(2, Duration::from_secs(60), 10);
        let now = Instant::now();
        assert!(!buckets.fail(1, now));
        assert!(buckets.fail(1, now), "over the limit: warn");
        assert!(!buckets.fail(1, now + Duration::from_secs(30)));
        assert!(buckets.fail(1, now + Duration::from_secs(61)));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let peer = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 40000));
        let trusted = [
            IpNet::parse("10.0.0.0/8").unwrap(),
            IpNet::parse("::1").unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Not a proxy: the header is ignored.
        assert_eq!(
            client_ip(peer("192.0.2.7"), ["203.0.113.1"].into_iter(), &trusted),
            ip("192.0.2.7")
        );
        // A proxy: the last address it did not add itself; a spoofed left part is ignored.
        assert_eq!(
            client_ip(
                peer("10.1.2.3"),
                ["1.1.1.1, 203.0.113.5", "10.0.0.9"].into_iter(),
                &trusted
            ),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(peer("::1"), ["[2001:db8::1]:555"].into_iter(), &trusted),
            ip("2001:db8::1")
        );
        // A proxy that sent no usable header: the proxy itself.
        assert_eq!(
            client_ip(peer("10.1.2.3"), ["garbage"].into_iter(), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(peer("10.1.2.3"), std::iter::empty(), &[]),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn networks_parse_and_match() {
        let net = IpNet::parse("192.0.2.0/24").unwrap();
        assert!(net.contains("192.0.2.200".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("proxy.example").is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let a = ClientAddress::of("2001:db8:1:2::1".parse().unwrap());
        let b = ClientAddress::of("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(a, ClientAddress::of("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(
            ClientAddress::of("::ffff:192.0.2.7".parse().unwrap()).to_string(),
            "192.0.2.7"
        );
    }

    #[test]
    fn only_the_id_part_of_a_token_is_read() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            token_id(&format!("lk_{id}_whatever")),
            Some(Uuid::parse_str(id).unwrap())
        );
        assert_eq!(token_id(&format!("lk_{}", id.to_uppercase())), None);
        assert_eq!(token_id("lk_short"), None);
        assert_eq!(token_id("garbage"), None);
    }
}
