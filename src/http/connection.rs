//! One served connection's deadlines and stop signals, at a cost per
//! request of a clock read and two atomic stores.
//!
//! - **The head deadline.** From the moment the server waits for a request
//!   head (the connection's start, and once each answer is out: its body
//!   written to the connection's buffer, see [`NotesEnd`]) the head
//!   must arrive within `header_read_timeout`; otherwise the connection is
//!   closed without an answer. hyper's own header timer allocates and
//!   registers a new timer for every request; here [`HeadClock`] only
//!   notes when the wait began, and one timer per connection ([`Served`]'s
//!   alarm) is moved forward when it fires early. It never fires late: it
//!   is set for the oldest deadline the connection could have. When it
//!   rings, the connection first reads what has arrived, so a head that
//!   came with the deadline is served rather than reset.
//! - **Stop signals.** The server's shutdown (the connection finishes the
//!   answer it is writing and closes, as hyper's graceful shutdown does)
//!   and the end of the drain (closed at once). They and the alarm are
//!   polled with their own waker, only when one of them fired, instead of
//!   on every wake of the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// When the connection began to wait for a request head, if it is waiting
/// (shared by the connection's service, which sees heads arrive and
/// answers end, and [`Served`], which enforces the deadline).
#[derive(Debug)]
pub struct HeadClock {
    base: Instant,
    /// Nanoseconds after `base` plus one; 0 while a request is in hand.
    waiting_since: AtomicU64,
}

impl HeadClock {
    /// A clock for a connection that waits for its first head from now.
    pub fn new() -> Arc<HeadClock> {
        Arc::new(HeadClock {
            base: Instant::now(),
            waiting_since: AtomicU64::new(1),
        })
    }

    /// A head arrived: no deadline until its answer is out.
    pub fn head_arrived(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    /// An answer was given: the next head is waited for from now.
    pub fn answered(&self) {
        let since = Instant::now().saturating_duration_since(self.base);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX - 1);
        self.waiting_since.store(nanos + 1, Ordering::Relaxed);
    }

    /// The instant the head waited for is due, if one is.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(self.base + Duration::from_nanos(since - 1) + timeout),
        }
    }
}

/// A connection that can be asked to finish its answer in hand and close
/// (hyper's own trait for this is sealed).
pub trait GracefulConnection: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

/// How a served connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// hyper finished it: the client closed, or it closed after an answer.
    Finished,
    /// No request head within the deadline.
    HeadTimedOut,
    /// The drain was over.
    Closed,
}

/// Wakes the connection's task and notes that a side future fired.
#[derive(Debug)]
struct SideWake {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl SideWake {
    fn task_waker(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(task) = self.task_waker().as_ref() {
            task.wake_by_ref();
        }
    }
}

pin_project_lite::pin_project! {
    /// A hyper connection served under the head deadline and the stop
    /// signals (see the module documentation).
    pub struct Served<C> {
        #[pin]
        connection: C,
        #[pin]
        alarm: Sleep,
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
        #[pin]
        close: WaitForCancellationFutureOwned,
        clock: Arc<HeadClock>,
        header_read_timeout: Duration,
        side: Arc<SideWake>,
        side_waker: Waker,
        shutting_down: bool,
    }
}

impl<C> Served<C> {
    /// `connection` under `clock`'s deadline; on `shutdown` it finishes
    /// its answer and closes, on `close` it is closed.
    pub fn new(
        connection: C,
        clock: Arc<HeadClock>,
        header_read_timeout: Duration,
        shutdown: tokio_util::sync::CancellationToken,
        close: tokio_util::sync::CancellationToken,
    ) -> Served<C> {
        // Fired from the start: the first poll polls the side futures,
        // which registers their waker.
        let side = Arc::new(SideWake {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let first_deadline = clock
            .deadline(header_read_timeout)
            .unwrap_or_else(|| Instant::now() + header_read_timeout);
        Served {
            connection,
            alarm: tokio::time::sleep_until(first_deadline),
            shutdown: shutdown.cancelled_owned(),
            close: close.cancelled_owned(),
            clock,
            header_read_timeout,
            side_waker: Waker::from(side.clone()),
            side,
            shutting_down: false,
        }
    }
}

impl<C> Future for Served<C>
where
    C: GracefulConnection,
{
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let mut this = self.project();
        {
            let mut task = this.side.task_waker();
            if !task
                .as_ref()
                .is_some_and(|known| known.will_wake(cx.waker()))
            {
                *task = Some(cx.waker().clone());
            }
        }
        let mut alarm_rang = false;
        if this.side.fired.swap(false, Ordering::Acquire) {
            let mut side_cx = Context::from_waker(this.side_waker);
            if this.close.as_mut().poll(&mut side_cx).is_ready() {
                return Poll::Ready(Ended::Closed);
            }
            if !*this.shutting_down && this.shutdown.as_mut().poll(&mut side_cx).is_ready() {
                *this.shutting_down = true;
                this.connection.as_mut().graceful_shutdown();
            }
            alarm_rang = this.alarm.as_mut().poll(&mut side_cx).is_ready();
        }
        if this.connection.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ended::Finished);
        }
        // The deadline is judged after the connection read what had come:
        // a head that arrived with the deadline is served, where closing
        // with its bytes unread would reset the client's request.
        if alarm_rang {
            let mut side_cx = Context::from_waker(this.side_waker);
            loop {
                let now = Instant::now();
                let next = match this.clock.deadline(*this.header_read_timeout) {
                    Some(deadline) if deadline <= now => return Poll::Ready(Ended::HeadTimedOut),
                    Some(deadline) => deadline,
                    // A request in hand: its own timeout bounds it.
                    None => now + *this.header_read_timeout,
                };
                this.alarm.as_mut().reset(next);
                if this.alarm.as_mut().poll(&mut side_cx).is_pending() {
                    break;
                }
            }
        }
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// A request's answer whose body tells the [`HeadClock`] when the
    /// answer is out ([`NotesEnd`]).
    pub struct NotesAnswer<F> {
        #[pin]
        answer: F,
        clock: Arc<HeadClock>,
    }
}

impl<F> NotesAnswer<F> {
    pub fn new(answer: F, clock: Arc<HeadClock>) -> NotesAnswer<F> {
        NotesAnswer { answer, clock }
    }
}

impl<F, B, E> Future for NotesAnswer<F>
where
    F: Future<Output = Result<hyper::Response<B>, E>>,
{
    type Output = Result<hyper::Response<NotesEnd<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.answer.poll(cx));
        Poll::Ready(answer.map(|response| {
            response.map(|body| NotesEnd {
                body,
                clock: Some(this.clock.clone()),
            })
        }))
    }
}

/// An answer's body that tells the [`HeadClock`] the answer is out when
/// hyper is done with it (all of it written to the connection's buffer,
/// or dropped): a client reading a long answer slowly is not held to the
/// next head's deadline meanwhile.
pub struct NotesEnd<B> {
    body: B,
    clock: Option<Arc<HeadClock>>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for NotesEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for NotesEnd<B> {
    fn drop(&mut self) {
        if let Some(clock) = self.clock.take() {
            clock.answered();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    /// A connection that never ends by itself, and counts graceful
    /// shutdowns.
    struct Forever(Arc<std::sync::atomic::AtomicUsize>);

    impl Future for Forever {
        type Output = Result<(), std::convert::Infallible>;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Pending
        }
    }

    impl GracefulConnection for Forever {
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn served(
        clock: &Arc<HeadClock>,
        timeout: Duration,
    ) -> (
        Pin<Box<Served<Forever>>>,
        Arc<std::sync::atomic::AtomicUsize>,
        CancellationToken,
        CancellationToken,
    ) {
        let graceful = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let close = CancellationToken::new();
        let served = Box::pin(Served::new(
            Forever(graceful.clone()),
            clock.clone(),
            timeout,
            shutdown.clone(),
            close.clone(),
        ));
        (served, graceful, shutdown, close)
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_not_begun_within_the_deadline_closes_the_connection_at_it() {
        let clock = HeadClock::new();
        let started = Instant::now();
        let (served, _, _, _) = served(&clock, Duration::from_secs(5));
        assert_eq!(served.await, Ended::HeadTimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn each_answer_restarts_the_wait_and_a_request_in_hand_has_no_head_deadline() {
        let clock = HeadClock::new();
        let started = Instant::now();
        let (mut served, _, _, _) = served(&clock, Duration::from_secs(5));
        // A request arrives at 3 s and is answered at 9 s (past the first
        // deadline); the next head is then due at 14 s, not before.
        let driver = {
            let clock = clock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                clock.head_arrived();
                tokio::time::sleep(Duration::from_secs(6)).await;
                clock.answered();
            })
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(13_999), served.as_mut())
                .await
                .is_err(),
            "closed before the deadline of the second head"
        );
        driver.await.unwrap();
        assert_eq!(served.await, Ended::HeadTimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(14));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_being_written_has_no_head_deadline_until_it_is_out() {
        let clock = HeadClock::new();
        clock.head_arrived();
        let started = Instant::now();
        let (mut served, _, _, _) = served(&clock, Duration::from_secs(5));
        let answer = NotesAnswer::new(
            std::future::ready(Ok::<_, std::convert::Infallible>(hyper::Response::new(
                axum::body::Body::from("a long answer, read slowly"),
            ))),
            clock.clone(),
        )
        .await
        .unwrap();
        // Ready, but not yet out: 20 s later the connection is still open.
        assert!(
            tokio::time::timeout(Duration::from_secs(20), served.as_mut())
                .await
                .is_err(),
            "closed while the answer was being written"
        );
        drop(answer);
        assert_eq!(served.await, Ended::HeadTimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(25));
    }

    /// A connection whose buffer holds a whole head from `at` on: polled
    /// then, it reads it, as hyper does, and (standing for its answer and
    /// the client's close) ends.
    struct HeadInBuffer {
        clock: Arc<HeadClock>,
        at: Instant,
    }

    impl Future for HeadInBuffer {
        type Output = Result<(), std::convert::Infallible>;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            if Instant::now() >= self.at {
                self.clock.head_arrived();
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        }
    }

    impl GracefulConnection for HeadInBuffer {
        fn graceful_shutdown(self: Pin<&mut Self>) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_arrives_with_the_deadline_is_read_not_reset() {
        let clock = HeadClock::new();
        let timeout = Duration::from_secs(5);
        let connection = HeadInBuffer {
            clock: clock.clone(),
            at: Instant::now() + timeout,
        };
        let started = Instant::now();
        let never = CancellationToken::new();
        let served = Served::new(connection, clock, timeout, never.clone(), never);
        assert_eq!(
            served.await,
            Ended::Finished,
            "closed with a head in its buffer"
        );
        assert_eq!(started.elapsed(), timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_asks_for_a_graceful_end_once_and_close_ends_it() {
        let clock = HeadClock::new();
        clock.head_arrived();
        let (mut served, graceful, shutdown, close) = served(&clock, Duration::from_secs(5));
        assert!(futures_poll(served.as_mut()).is_pending());
        assert_eq!(graceful.load(Ordering::SeqCst), 0);
        shutdown.cancel();
        assert!(futures_poll(served.as_mut()).is_pending());
        assert!(futures_poll(served.as_mut()).is_pending());
        assert_eq!(graceful.load(Ordering::SeqCst), 1);
        close.cancel();
        assert_eq!(futures_poll(served.as_mut()), Poll::Ready(Ended::Closed));
    }

    fn futures_poll<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
        let waker = Waker::noop();
        future.poll(&mut Context::from_waker(waker))
    }
}
