import Courier
import DequeModule
import Logging
import Synchronization

/// Runs one handler registration: takes deliveries from its subscription and hands each to
/// `process`, at most `concurrency` at once, never two with the same key at once and each
/// key in arrival order.
///
/// `process` may return a *settlement* still to finish (a dead-letter publish waiting for its
/// broker confirm): the delivery's slot is freed at once, so the next message is handled while
/// the settlement completes, but its key stays busy until then, so a later message of the
/// same key never overtakes it. Settlements are bounded by the prefetch (their deliveries
/// stay unsettled until they finish), and stopping waits for them like running handlers.
///
/// A slot is taken before a delivery is taken from the subscription, so the registration
/// never holds more than `concurrency` deliveries (running or waiting behind their key).
/// Workers are tasks that stay: one that has nothing left to handle parks (up to
/// `concurrency` of them) until the next delivery, so a message costs no task of its own.
/// Stopping ends intake (the subscription's `next()` is cancelled), lets running handlers
/// finish until a deadline, then closes the subscription: whatever is still unsettled (a
/// handler past the deadline, a delivery waiting behind its key) goes back to the broker.
final class HandlerDispatcher: Sendable {
    private let subscription: Subscription
    private let concurrency: Int
    private let logger: Logger
    private let process: @Sendable (Delivery) async -> Settlement?

    /// What remains to settle a delivery after its handler decided its fate.
    typealias Settlement = @Sendable () async -> Void

    private struct State {
        var free: Int
        /// The intake waiting for a free slot (one task; measured cheaper than a `Waiters`
        /// queue on the bus's per-message path).
        var slotWaiter: UnsafeContinuation<Bool, Never>?
        /// Keys being handled, each with the deliveries waiting behind it.
        var busyKeys: [String: Deque<Delivery>] = [:]
        var running: [Int: Task<Void, Never>] = [:]
        /// Workers waiting for their next delivery (`nil`: stop).
        var parked: [UnsafeContinuation<Delivery?, Never>] = []
        var nextWorker = 0
        var stopping = false
        var intake: Task<Void, Never>?
        var intakeEnded = false
        var failure: (any Error)?
        /// `stop` waiting for the running handlers to finish, and whether its deadline passed.
        var idleWaiters = Waiters<Void, Void>()
        var deadlinePassed = false
    }
    private let state: Mutex<State>

    init(subscription: Subscription, concurrency: Int, logger: Logger, process: @escaping @Sendable (Delivery) async -> Settlement?) {
        self.subscription = subscription
        self.concurrency = concurrency
        self.logger = logger
        self.process = process
        self.state = Mutex(State(free: concurrency))
    }

    func start() {
        state.withLock { state in
            state.intake = Task { [self] in await runIntake() }
        }
    }

    /// The error that ended intake, if the subscription failed.
    var failure: (any Error)? { state.withLock { $0.failure } }

    /// How many handlers are running (not counting parked workers).
    var runningCount: Int { state.withLock { $0.running.count - $0.parked.count } }

    private func runIntake() async {
        var iterator = subscription.makeAsyncIterator()
        while await acquireSlot() {
            let delivery: Delivery?
            do {
                delivery = try await iterator.next()
            } catch {
                releaseSlot()
                if !Task.isCancelled {
                    logger.error("subscription failed; this handler takes no more messages", metadata: ["courier-error": "\(error)"])
                    state.withLock { $0.failure = error }
                }
                break
            }
            guard let delivery else {
                releaseSlot()
                break
            }
            dispatch(delivery)
        }
        state.withLock { $0.intakeEnded = true }
    }

    private func acquireSlot() async -> Bool {
        let fast: Bool? = state.withLock { state in
            if state.stopping || Task.isCancelled { return false }
            if state.free > 0 {
                state.free -= 1
                return true
            }
            return nil
        }
        if let fast { return fast }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Bool, Never>) in
                let immediate: Bool? = state.withLock { state in
                    if state.stopping || Task.isCancelled { return false }
                    if state.free > 0 {
                        state.free -= 1
                        return true
                    }
                    state.slotWaiter = continuation
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            state.withLock { state in
                defer { state.slotWaiter = nil }
                return state.slotWaiter
            }?.resume(returning: false)
        }
    }

    private func releaseSlot() {
        let waiter = state.withLock { state -> UnsafeContinuation<Bool, Never>? in
            if let waiter = state.slotWaiter {
                state.slotWaiter = nil
                return waiter  // the slot passes straight to the intake
            }
            state.free += 1
            return nil
        }
        waiter?.resume(returning: true)
    }

    private func dispatch(_ delivery: Delivery) {
        let key = delivery.envelope.key
        let parked = state.withLock { state -> UnsafeContinuation<Delivery?, Never>? in
            if let key {
                if state.busyKeys[key] != nil {
                    state.busyKeys[key]!.append(delivery)
                    return nil
                }
                state.busyKeys[key] = []
            }
            if let parked = state.parked.popLast() { return parked }
            let worker = state.nextWorker
            state.nextWorker += 1
            // Created under the lock, so the worker cannot finish (and deregister) before it
            // is registered.
            state.running[worker] = Task { [self] in await work(worker, first: delivery) }
            return nil
        }
        parked?.resume(returning: delivery)
    }

    /// Handles `first` and whatever queued up behind its key, then parks for the next
    /// delivery; ends when there is no room to park or the dispatcher stops.
    private func work(_ worker: Int, first: Delivery) async {
        var next: Delivery? = first
        while let delivery = next {
            await handle(delivery)
            next = await park()
        }
        let idle = state.withLock { state in
            state.running.removeValue(forKey: worker)
            // Only a stop waits here: nothing to take on the per-message path otherwise.
            return state.running.isEmpty && !state.idleWaiters.isEmpty ? state.idleWaiters.removeAll() : []
        }
        for waiter in idle { waiter.resume() }
    }

    /// Handles `first`, then whatever queued up behind its key.
    private func handle(_ first: Delivery) async {
        let key = first.envelope.key
        var current = first
        while true {
            let settlement = await process(current)
            releaseSlot()
            await settlement?()
            let next = state.withLock { state -> Delivery? in
                guard let key else { return nil }
                if !state.stopping, let waiting = state.busyKeys[key]?.popFirst() { return waiting }
                // Stopping: deliveries still waiting stay unsettled; closing the subscription
                // returns them to the broker.
                state.busyKeys[key] = nil
                return nil
            }
            guard let next else { return }
            current = next
        }
    }

    /// Waits for the next delivery; `nil` when stopping or when `concurrency` workers are
    /// parked already (this one ends).
    private func park() async -> Delivery? {
        if state.withLock({ $0.stopping || $0.parked.count >= concurrency }) { return nil }
        return await withUnsafeContinuation { (continuation: UnsafeContinuation<Delivery?, Never>) in
            let parked = state.withLock { state in
                if state.stopping || state.parked.count >= concurrency { return false }
                state.parked.append(continuation)
                return true
            }
            if !parked { continuation.resume(returning: nil) }
        }
    }

    /// Stops intake, waits up to `deadline` for running handlers, then closes the
    /// subscription (returning anything unsettled) and cancels handlers still running.
    /// Returns how many handlers were still running at the deadline.
    @discardableResult
    func stop(deadline: Duration) async -> Int {
        let (intake, parked) = state.withLock { state in
            state.stopping = true
            defer { state.parked = [] }
            return (state.intake, state.parked)
        }
        for worker in parked { worker.resume(returning: nil) }
        let waiter = state.withLock { state in
            defer { state.slotWaiter = nil }
            return state.slotWaiter
        }
        waiter?.resume(returning: false)
        intake?.cancel()
        await intake?.value
        // Waits (no polling) until the last handler finishes or the deadline passes; a
        // cancelled stop waits no longer.
        let timer = Task { [self] in
            try? await Task.sleep(for: deadline)
            let waiters = state.withLock { state in
                state.deadlinePassed = true
                return state.idleWaiters.removeAll()
            }
            for waiter in waiters { waiter.resume() }
        }
        _ = try? await Waiters.wait(in: state, \.idleWaiters, cancelled: .success(())) { state in
            state.running.isEmpty || state.deadlinePassed ? .success(()) : nil
        }
        timer.cancel()
        let late = state.withLock { Array($0.running.values) }
        await subscription.close()
        for task in late { task.cancel() }
        for task in late { await task.value }
        return late.count
    }
}
