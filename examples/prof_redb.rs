use redb::{Database, TableDefinition};
use std::time::Instant;
use zippyfs::store::SplitMix64;
const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("db")).unwrap();
    let mut rng = SplitMix64(1);
    let val = [7u8; 100];
    let commits: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200);
    let t0 = Instant::now();
    let mut tc = std::time::Duration::ZERO;
    for _ in 0..commits {
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            for _ in 0..1000 {
                let mut k = [0u8; 16];
                k[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                k[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
                t.insert(&k[..], &val[..]).unwrap();
            }
        }
        let tt = Instant::now();
        w.commit().unwrap();
        tc += tt.elapsed();
    }
    println!(
        "redb {commits} commits: {:?} in all, {:?} in commits, file {}",
        t0.elapsed(),
        tc,
        std::fs::metadata(dir.path().join("db")).unwrap().len()
    );
}
