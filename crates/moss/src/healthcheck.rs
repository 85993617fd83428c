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
    let deadline = std::time::Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: `write!` on an unbuffered stream sends each formatted piece on its own.
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    // At most MAX_ANSWER bytes, all within the one deadline (a trickle cannot stretch it).
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while (answer.len() as u64) < MAX_ANSWER {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            bail!("no complete answer from {addr} within {timeout:?}");
        }
        stream.set_read_timeout(Some(left))?;
        let want = buf.len().min((MAX_ANSWER - answer.len() as u64) as usize);
        match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                bail!("no complete answer from {addr} within {timeout:?}")
            }
            Err(e) => return Err(e).with_context(|| format!("reading from {addr}")),
        }
    }
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

    /// A listener on loopback whose every connection gets `answer` (then, if `forever`, the same
    /// bytes again without end, one write per 50 ms).
    fn fake(answer: &'static [u8], forever: bool) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    // The whole request first: closing with unread bytes would reset the
                    // connection before the client reads the answer.
                    let mut req = Vec::new();
                    let mut byte = [0u8; 1];
                    while !req.ends_with(b"\r\n\r\n") && matches!(conn.read(&mut byte), Ok(1)) {
                        req.push(byte[0]);
                    }
                    while conn.write_all(answer).is_ok() && forever {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn a_healthy_answer_passes_and_others_fail() {
        assert!(run(fake(b"HTTP/1.1 200 OK\r\n\r\n{\"status\":\"ok\"}", false), Duration::from_secs(2)).is_ok());
        let err = run(fake(b"HTTP/1.1 503 Service Unavailable\r\n\r\ndown", false), Duration::from_secs(2));
        assert!(err.unwrap_err().to_string().contains("503"));
    }

    /// An endless answer is read up to the budget, a trickle only until the deadline.
    #[test]
    fn endless_or_trickling_answers_are_bounded_in_size_and_time() {
        let started = std::time::Instant::now();
        let huge = run(fake(&[b'x'; 16 * 1024], true), Duration::from_secs(30));
        assert!(huge.is_err(), "not a 200");
        let trickle = run(fake(b"H", true), Duration::from_millis(500));
        assert!(trickle.unwrap_err().to_string().contains("within"), "the deadline ends a trickle");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn unspecified_binds_are_reached_on_loopback() {
        assert_eq!(target("0.0.0.0:8008".parse().unwrap()), "127.0.0.1:8008".parse().unwrap());
        assert_eq!(target("[::]:8008".parse().unwrap()), "[::1]:8008".parse().unwrap());
        assert_eq!(target("10.1.2.3:8008".parse().unwrap()), "10.1.2.3:8008".parse().unwrap());
    }
}
