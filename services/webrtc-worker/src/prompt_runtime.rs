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
//! Only the driver task is affected: its future runs inside [`IN_DRIVER`], and only a `sleep`
//! made from inside that scope is shortened, so the library's other waits (the close time-out,
//! the send back-pressure backstop) keep their full length.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Loop passes to run promptly after activity: one moves the core's writes into the relayer
/// (or lets a state change queue its first packet), the next sends them.
const PROMPT_PASSES: u8 = 2;

tokio::task_local! {
    /// Set while the connection's driver future is polled.
    static IN_DRIVER: ();
}

/// Counts the prompt loop passes still owed; shared by the runtime, its sockets and the
/// connection's senders.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<AtomicU8>);

impl Activity {
    /// Something happened that may have queued writes: run the next passes promptly.
    pub fn mark(&self) {
        self.0.store(PROMPT_PASSES, Ordering::Release);
    }

    /// Takes one owed pass, if any.
    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
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
            self.activity.mark();
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
