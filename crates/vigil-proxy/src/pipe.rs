//! Copying between a client and its backend, both ways, with one read per message.
//!
//! tokio's `copy_bidirectional` reads a socket until the kernel answers `WouldBlock`, so every
//! message costs one more read that finds nothing. A TCP read that returns less than the
//! buffer has emptied the socket's receive queue (Linux copies everything queued, up to the
//! buffer's size), so [`copy_both`] takes a short read as the end of what is there and waits
//! for the next readiness event instead, as HAProxy does. Readiness is edge-triggered: data
//! or a FIN that arrives after the read raises a new event, which clearing the old readiness
//! cannot lose (tokio clears only readiness from events it has already seen, and never a
//! peer's close).
//!
//! Each direction has one fixed buffer; nothing is allocated per message. When one side
//! closes its sending half, the rest is written and the close is passed on (`shutdown(WR)`),
//! and the other direction goes on until it closes too.

use std::future::poll_fn;
use std::io;
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Copies `a` → `b` and `b` → `a` until both directions are closed; returns the bytes copied
/// each way. An error on either socket ends both.
pub async fn copy_both(a: &TcpStream, b: &TcpStream, a_to_b: usize, b_to_a: usize) -> io::Result<(u64, u64)> {
    let mut up = Half::new(a_to_b);
    let mut down = Half::new(b_to_a);
    poll_fn(|cx| {
        let up_done = up.poll(cx, a, b)?.is_ready();
        let down_done = down.poll(cx, b, a)?.is_ready();
        if up_done && down_done {
            Poll::Ready(Ok((up.copied, down.copied)))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction: what was read and not yet written is `buf[start..end]`.
struct Half {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The source closed its sending half.
    eof: bool,
    /// That close was passed on.
    closed: bool,
    copied: u64,
}

impl Half {
    fn new(size: usize) -> Half {
        Half {
            buf: vec![0; size].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            closed: false,
            copied: 0,
        }
    }

    /// Ready when this direction is finished: the source closed and all was written.
    fn poll(&mut self, cx: &mut Context<'_>, from: &TcpStream, to: &TcpStream) -> Poll<io::Result<()>> {
        loop {
            while self.start < self.end {
                ready!(to.poll_write_ready(cx))?;
                match to.try_write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.start += n;
                        self.copied += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if self.eof {
                if !self.closed {
                    self.closed = true;
                    match rustix::net::shutdown(to, rustix::net::Shutdown::Write) {
                        // The peer may be gone already; nothing is left to tell it.
                        Ok(()) | Err(rustix::io::Errno::NOTCONN) => {}
                        Err(e) => return Poll::Ready(Err(e.into())),
                    }
                }
                return Poll::Ready(Ok(()));
            }
            ready!(from.poll_read_ready(cx))?;
            let buf = &mut self.buf;
            let mut short = None;
            let read = from.try_io(Interest::READABLE, || {
                // recv, not read: a socket needs none of read's file-position bookkeeping.
                let (n, _) = rustix::net::recv(from, &mut buf[..], rustix::net::RecvFlags::empty())?;
                if n > 0 && n < buf.len() {
                    // The queue is empty: have tokio clear the readiness, keep the bytes.
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (read, short) {
                (Ok(0), _) => self.eof = true,
                (Ok(n), _) | (Err(_), Some(n)) => (self.start, self.end) = (0, n),
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => {}
                (Err(e), None) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn messages_of_every_size_cross_both_ways_and_closes_pass_on() {
        // client ⇄ (c_proxy ⇄ s_proxy) ⇄ server, with small buffers so that messages are
        // larger than them, equal to them and smaller.
        let (mut client, c_proxy) = pair().await;
        let (s_proxy, mut server) = pair().await;
        let copy = tokio::spawn(async move { copy_both(&c_proxy, &s_proxy, 7, 5).await });
        let mut copied = (0, 0);
        for size in [1usize, 4, 5, 6, 7, 8, 100, 70_000] {
            let up: Vec<u8> = (0..size).map(|i| i as u8).collect();
            client.write_all(&up).await.unwrap();
            let mut got = vec![0; size];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, up, "{size} bytes up");
            let down: Vec<u8> = up.iter().rev().copied().collect();
            server.write_all(&down).await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, down, "{size} bytes down");
            copied = (copied.0 + size as u64, copied.1 + size as u64);
        }
        // The client closes its half: the server sees the end, still answers, then closes.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        let totals = copy.await.unwrap().unwrap();
        assert_eq!(totals, (copied.0, copied.1 + 3));
    }

    #[tokio::test]
    async fn data_and_close_sent_together_both_arrive() {
        let (mut client, c_proxy) = pair().await;
        let (s_proxy, mut server) = pair().await;
        let copy = tokio::spawn(async move { copy_both(&c_proxy, &s_proxy, 1024, 1024).await });
        // A short message with the FIN right behind it: the short read must not make the
        // copy miss the close.
        server.write_all(b"last words").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        client.shutdown().await.unwrap();
        assert_eq!(copy.await.unwrap().unwrap(), (0, 10));
    }
}
