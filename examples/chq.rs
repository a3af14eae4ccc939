// Throwaway: time SQL against an embedded engine path (not committed).
use std::time::Instant;
#[tokio::main]
async fn main() {
    let mut s = learnvault::config::Settings::load().unwrap();
    let args: Vec<String> = std::env::args().collect();
    s.warehouse.url = format!("chdb://{}", args[1]);
    let wh = learnvault::warehouse::Warehouse::open(&s).unwrap();
    for sql in &args[2..] {
        for _ in 0..3 {
            let t = Instant::now();
            let r = wh.raw(sql, "TSV", &[]).await;
            let out = match r { Ok(b) => String::from_utf8_lossy(&b).chars().take(100).collect::<String>(), Err(e) => format!("ERR {e}") };
            println!("{:>8.1} ms  {}", t.elapsed().as_secs_f64() * 1000.0, out.replace('\n', " | "));
        }
    }
    wh.close();
}
