//! Which versions are kept. A pure function of the versions' times, the
//! clock and the policy, so it is easy to test and the same everywhere.
//!
//! The newest version is always kept. Beyond it a version is kept if any rule
//! keeps it: it is among the newest `keep_last`; it is younger than
//! `keep_within`; or it is the newest version of one of the newest `hourly`
//! hours (or `daily` days, `weekly` weeks, counted in UTC) that have a version.

use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: usize,
    pub keep_within: Duration,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    /// A cap on the bytes the store uses (its live data and what old
    /// versions hold); 0: none. Over it, each commit drops the oldest kept
    /// version, never the newest, until it fits.
    pub max_bytes: u64,
}

impl Default for Retention {
    /// The last 100 versions, then one an hour for a day and one a day for a month.
    fn default() -> Self {
        Retention {
            keep_last: 100,
            keep_within: Duration::ZERO,
            hourly: 24,
            daily: 30,
            weekly: 0,
            max_bytes: 0,
        }
    }
}

impl Retention {
    /// Keeps only the newest `n` versions.
    pub fn last(n: usize) -> Self {
        Retention {
            keep_last: n,
            keep_within: Duration::ZERO,
            hourly: 0,
            daily: 0,
            weekly: 0,
            max_bytes: 0,
        }
    }

    /// Keeps everything (nothing is ever freed but replaced pages of
    /// versions that never reached a commit).
    pub fn all() -> Self {
        Self::last(usize::MAX)
    }
}

/// The retention file of a store directory.
pub const RETENTION_FILE: &str = "retention.conf";

impl Retention {
    /// Reads the policy from its text form: `key = value` lines, `#`
    /// comments; keys `keep_last`, `keep_within` (a duration: `90s`, `30m`,
    /// `12h`, `7d`), `hourly`, `daily`, `weekly`. Keys left out keep their
    /// default.
    pub fn parse(text: &str) -> Result<Retention, String> {
        let mut r = Retention::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
            let count = || {
                v.parse::<usize>()
                    .map_err(|_| format!("line {}: {k} needs a count", n + 1))
            };
            match k {
                "keep_last" => r.keep_last = count()?,
                "hourly" => r.hourly = count()?,
                "daily" => r.daily = count()?,
                "weekly" => r.weekly = count()?,
                "max_size" => {
                    r.max_bytes = parse_size(v).map_err(|_| {
                        format!("line {}: max_size needs a size like 10G (0: none)", n + 1)
                    })?
                }
                "keep_within" => {
                    r.keep_within = parse_duration(v).ok_or_else(|| {
                        format!("line {}: keep_within needs a duration like 30m", n + 1)
                    })?
                }
                _ => return Err(format!("line {}: unknown key {k}", n + 1)),
            }
        }
        Ok(r)
    }

    /// The policy in a store directory's retention file; `None` where the
    /// directory has none. Errors name the file.
    pub fn load(store_dir: &std::path::Path) -> Result<Option<Retention>, String> {
        let conf = store_dir.join(RETENTION_FILE);
        match std::fs::read_to_string(&conf) {
            Ok(text) => Retention::parse(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", conf.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", conf.display())),
        }
    }

    /// The text form `parse` reads.
    pub fn to_text(&self) -> String {
        format!(
            "keep_last = {}\nkeep_within = {}s\nhourly = {}\ndaily = {}\nweekly = {}\nmax_size = {}\n",
            self.keep_last,
            self.keep_within.as_secs(),
            self.hourly,
            self.daily,
            self.weekly,
            self.max_bytes
        )
    }
}

/// `256M`, `1G`, `4096`, `64k`, `1GiB`, `2mb`: bytes, with binary
/// multiples. The one parser of sizes, for every option and file that takes one.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| t.strip_suffix(['B', 'b']))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "{s:?}: unknown size suffix {c:?} (use K, M, G or T)"
                    ));
                }
            };
            (&t[..at], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 64K, 256M, 1G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `90s`, `30m`, `12h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        "w" => n.checked_mul(604_800)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

const NS: u64 = 1_000_000_000;

/// `versions` as (id, time in unix nanoseconds), ascending by id (times may
/// go backwards if the clock did). Returns the ids to keep.
pub fn select(versions: &[(u64, u64)], now_ns: u64, p: &Retention) -> BTreeSet<u64> {
    let mut keep = BTreeSet::new();
    let newest_first = || versions.iter().rev();
    if let Some(&(id, _)) = versions.last() {
        keep.insert(id);
    }
    keep.extend(newest_first().take(p.keep_last).map(|&(id, _)| id));
    if !p.keep_within.is_zero() {
        let since = now_ns.saturating_sub(p.keep_within.as_nanos().min(u64::MAX as u128) as u64);
        keep.extend(
            newest_first()
                .filter(|&&(_, t)| t >= since)
                .map(|&(id, _)| id),
        );
    }
    for (count, period) in [(p.hourly, 3600), (p.daily, 86_400), (p.weekly, 604_800)] {
        let mut last_bucket = None;
        let mut taken = 0;
        for &(id, t) in newest_first() {
            if taken >= count {
                break;
            }
            let bucket = t / (period * NS);
            if last_bucket != Some(bucket) {
                last_bucket = Some(bucket);
                keep.insert(id);
                taken += 1;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600 * NS;

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let v: Vec<_> = (1..=20).map(|i| (i, i * NS)).collect();
        let k = select(&v, 100 * NS, &Retention::last(3));
        assert_eq!(k.into_iter().collect::<Vec<_>>(), vec![18, 19, 20]);
    }

    #[test]
    fn newest_is_kept_even_with_keep_last_zero() {
        let v = vec![(1, 0), (2, 1)];
        assert_eq!(select(&v, 5, &Retention::last(0)), [2].into());
    }

    #[test]
    fn hourly_keeps_the_newest_version_of_each_recent_hour() {
        // Three versions in each of hours 0..5.
        let v: Vec<_> = (0..15u64)
            .map(|i| (i + 1, (i / 3) * H + (i % 3) * NS))
            .collect();
        let p = Retention {
            keep_last: 1,
            hourly: 3,
            ..Retention::last(1)
        };
        let k = select(&v, 5 * H, &p);
        // Newest of hours 4, 3, 2 are ids 15, 12, 9.
        assert_eq!(k.into_iter().collect::<Vec<_>>(), vec![9, 12, 15]);
    }

    #[test]
    fn policy_text_round_trips_and_bad_lines_are_named() {
        let p = Retention {
            keep_last: 5,
            keep_within: Duration::from_secs(1800),
            hourly: 2,
            daily: 3,
            weekly: 4,
            max_bytes: 5 << 30,
        };
        assert_eq!(Retention::parse(&p.to_text()).unwrap(), p);
        assert_eq!(
            Retention::parse("keep_within = 2h # comment\n")
                .unwrap()
                .keep_within,
            Duration::from_secs(7200)
        );
        assert!(
            Retention::parse("keep_last = many")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(
            Retention::parse("\nfoo = 1")
                .unwrap_err()
                .contains("unknown key foo")
        );
    }

    #[test]
    fn keep_within_keeps_everything_younger() {
        let v: Vec<_> = (1..=10).map(|i| (i, i * 60 * NS)).collect();
        let p = Retention {
            keep_within: Duration::from_secs(150),
            ..Retention::last(1)
        };
        let k = select(&v, 600 * NS, &p);
        assert_eq!(k.into_iter().collect::<Vec<_>>(), vec![8, 9, 10]);
    }

    #[test]
    fn every_size_option_takes_the_same_spellings() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2mb"), Ok(2 << 20));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
