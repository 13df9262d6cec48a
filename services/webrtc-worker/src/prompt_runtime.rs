//! A `webrtc` runtime that makes the connection driver flush promptly, through the crate's public
//! `Runtime` trait: everything is delegated to `TokioRuntime`, except that after activity (a
//! datagram received, or a message we sent) the driver's next wait is cut short so it runs its
//! loop once or twice more straight away.
//!
//! Why (webrtc 0.21.1): the driver loop drains the TURN relayer's outbox *before* it moves the
//! core's queued writes into it, and writes the core queues while handling events (the DTLS
//! ClientHello after ICE connects, the SCTP INIT, data on a relayed path) are sent only when the
//! loop next wakes, which at setup and on an idle relayed link is the next ICE timer (hundreds of
//! ms). A short keepalive hides that but costs CPU on every idle link forever; this costs one or
//! two extra loop passes per burst of activity and nothing at idle.
//!
//! It also sizes each UDP socket's kernel buffers ([`SOCKET_BUFFER_BYTES`], capped by the
//! kernel at `net.core.rmem_max`/`wmem_max`): at the default ~208 KiB a burst of SCTP data on a
//! fast path overflows the receive buffer, the kernel drops datagrams, and SCTP stalls for a
//! retransmission time-out (measured: 64 KiB-message throughput swinging from 100 MB/s to 2 MB/s).
//!
//! Only the driver task is affected: its future runs inside [`IN_DRIVER`], and only a `sleep`
//! made from inside that scope is shortened, so the library's other waits (the close time-out,
//! the send back-pressure backstop) keep their full length.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Loop passes to run promptly after activity: one moves the core's writes into the relayer
/// (or lets a state change queue its first packet), the next sends them.
const PROMPT_PASSES: u8 = 2;

/// Kernel send and receive buffer asked for each connection's UDP sockets.
pub const SOCKET_BUFFER_BYTES: usize = 2 << 20;

tokio::task_local! {
    /// Set while the connection's driver future is polled.
    static IN_DRIVER: ();
}

/// Counts the prompt loop passes still owed; shared by the runtime, its sockets, the
/// connection's senders and its event handler.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    owed: Arc<AtomicU8>,
    /// Once the link is up, a bare STUN datagram (an ICE keepalive or its answer, first byte 0 to
    /// 3, RFC 7983) needs no extra pass: the library answers it in the pass that reads it. Data
    /// gets them, so that what reading it queues (SCTP acknowledgements, replies) leaves at once,
    /// and relayed data must also cross the relayer. A TURN Data indication is STUN-framed but
    /// relayed, so it counts as data.
    /// During setup every datagram does: a binding success starts DTLS, DTLS starts SCTP, SCTP
    /// the channel OPENs. "Up" is both channels open, not the connection state (which says
    /// connected once DTLS is, before SCTP).
    established: Arc<AtomicBool>,
    /// Bit 0: mesh channel open, bit 1: probe channel open.
    open_channels: Arc<AtomicU8>,
}

impl Activity {
    /// Something happened that may have queued writes: run the next passes promptly.
    pub fn mark(&self) {
        self.owed.store(PROMPT_PASSES, Ordering::Release);
    }

    /// A datagram arrived, starting with `head` (its first two bytes).
    fn received(&self, head: [u8; 2]) {
        let keepalive = head[0] <= 3 && !relayed(head);
        if !(keepalive && self.established.load(Ordering::Acquire)) {
            self.mark();
        }
    }

    pub fn set_established(&self, up: bool) {
        self.established.store(up, Ordering::Release);
    }

    /// A channel opened or closed; the link is up when both are open.
    pub fn channel_open(&self, mesh: bool, open: bool) {
        let bit = if mesh { 1 } else { 2 };
        let now = if open {
            self.open_channels.fetch_or(bit, Ordering::AcqRel) | bit
        } else {
            self.open_channels.fetch_and(!bit, Ordering::AcqRel) & !bit
        };
        self.set_established(now == 3);
    }

    /// Takes one owed pass, if any.
    fn take(&self) -> bool {
        self.owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Whether a datagram came through a TURN relay: ChannelData (RFC 8656 §12, first byte 0x40 to
/// 0x4F, RFC 7983) or a STUN Data indication (type 0x0017).
fn relayed(head: [u8; 2]) -> bool {
    (0x40..=0x4f).contains(&head[0]) || head == [0x00, 0x17]
}

/// One per connection, so its activity marks reach only its own driver.
#[derive(Debug)]
pub struct PromptRuntime {
    inner: TokioRuntime,
    activity: Activity,
}

impl PromptRuntime {
    pub fn new(activity: Activity) -> Self {
        PromptRuntime {
            inner: TokioRuntime,
            activity,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Runtime for PromptRuntime {
    fn spawn(&self, future: BoxFuture<()>) -> Box<dyn JoinHandle> {
        self.inner.spawn(Box::pin(IN_DRIVER.scope((), future)))
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: BoxFuture<()>,
    ) -> Box<dyn JoinHandle> {
        self.inner
            .spawn_reactor(reactor_pool_size, Box::pin(IN_DRIVER.scope((), future)))
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let sock = socket2::SockRef::from(&socket);
        // Best effort: the kernel caps the size at its maximum, and a smaller buffer still works.
        if let Err(e) = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
            tracing::debug!("UDP receive buffer not enlarged: {e}");
        }
        if let Err(e) = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
            tracing::debug!("UDP send buffer not enlarged: {e}");
        }
        let inner = self.inner.wrap_udp_socket(socket)?;
        Ok(Arc::new(MarkingSocket {
            inner,
            activity: self.activity.clone(),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        let in_driver = IN_DRIVER.try_with(|_| ()).is_ok();
        if in_driver && self.activity.take() {
            return self.inner.sleep(Duration::ZERO);
        }
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> BoxFuture<()> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "meshrtc-prompt-tokio"
    }
}

/// A UDP socket that marks activity whenever it receives.
struct MarkingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    activity: Activity,
}

impl fmt::Debug for MarkingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MarkingSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncUdpSocket for MarkingSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let result = self.inner.poll_recv(cx, bufs, meta);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            let head = bufs
                .first()
                .and_then(|b| b.get(..2))
                .map_or([0, 0], |h| [h[0], h[1]]);
            self.activity.received(head);
        }
        result
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_owes_a_bounded_number_of_passes() {
        let a = Activity::default();
        assert!(!a.take());
        a.mark();
        a.mark();
        assert!(a.take() && a.take());
        assert!(!a.take(), "marks do not accumulate past PROMPT_PASSES");
    }

    #[test]
    fn once_up_only_keepalives_buy_no_passes() {
        let a = Activity::default();
        let drained = |a: &Activity| {
            let owed = a.take();
            while a.take() {}
            owed
        };
        a.received([0x00, 0x01]); // STUN during setup
        assert!(drained(&a));
        a.channel_open(true, true);
        a.received([23, 0xfe]); // SCTP setup on DTLS, one channel open: still setup
        assert!(drained(&a));
        a.channel_open(false, true);
        for keepalive in [[0x00, 0x01], [0x01, 0x01]] {
            a.received(keepalive); // binding request or indication, binding response
            assert!(!drained(&a), "{keepalive:?}");
        }
        for data in [[23, 0xfe], [0x40, 0x00], [0x4f, 0x10], [0x00, 0x17]] {
            a.received(data); // DTLS record, ChannelData, Data indication
            assert!(drained(&a), "{data:?}");
        }
        a.mark(); // our own send, always
        assert!(drained(&a));
    }

    #[tokio::test]
    async fn only_the_driver_scope_gets_short_sleeps() {
        let activity = Activity::default();
        let rt = PromptRuntime::new(activity.clone());
        activity.mark();
        // Outside the driver: full length, and the owed passes are left for the driver.
        let outside =
            tokio::time::timeout(Duration::from_millis(50), rt.sleep(Duration::from_secs(5))).await;
        assert!(outside.is_err());
        // Inside: returns at once while passes are owed.
        let fast = IN_DRIVER.scope((), async {
            tokio::time::timeout(Duration::from_millis(50), rt.sleep(Duration::from_secs(5))).await
        });
        assert!(fast.await.is_ok());
    }
}
