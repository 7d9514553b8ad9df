//! Sends datagrams, one per line of hex in FILE, from `--from` (any port)
//! to `--to`: what an attacker on the outer network replays. For the
//! tenant-isolation tests, run inside the peer's namespace.
//!
//! `udp_send --from IP --to IP:PORT FILE`

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    from: std::net::IpAddr,
    #[arg(long)]
    to: std::net::SocketAddr,
    file: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let socket = std::net::UdpSocket::bind((cli.from, 0)).context("bind")?;
    let text = std::fs::read_to_string(&cli.file)?;
    let mut sent = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let bytes = (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(line.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .context("not hex")?;
        socket.send_to(&bytes, cli.to)?;
        sent += 1;
    }
    println!("{sent}");
    Ok(())
}
