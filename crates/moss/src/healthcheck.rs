//! `moss healthcheck`: asks the running server's `/health` on its client listener and exits 0
//! only on a 200. For container HEALTHCHECKs and monitoring on images without curl: plain
//! HTTP/1.1 over std's TcpStream, bounded in time and in what it reads.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// The longest answer read: `/health` answers a few hundred bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// Where to reach a listener bound to `bind`: an unspecified address (0.0.0.0, ::) is reached
/// on loopback of the same family.
fn target(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

pub fn run(bind: SocketAddr, timeout: Duration) -> Result<()> {
    let addr = target(bind);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).with_context(|| format!("reading from {addr}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") => {
            println!("healthy: {}", body.trim());
            Ok(())
        }
        _ => bail!("unhealthy: {status} {}", body.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_binds_are_reached_on_loopback() {
        assert_eq!(target("0.0.0.0:8008".parse().unwrap()), "127.0.0.1:8008".parse().unwrap());
        assert_eq!(target("[::]:8008".parse().unwrap()), "[::1]:8008".parse().unwrap());
        assert_eq!(target("10.1.2.3:8008".parse().unwrap()), "10.1.2.3:8008".parse().unwrap());
    }
}
