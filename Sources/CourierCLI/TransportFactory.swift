import Courier
import CourierTransports
import Foundation

/// Turns a transport URL into a connected transport, for every transport linked into the tool.
enum TransportFactory {
    static func connect(_ url: String) async throws -> any Transport {
        try await Transports.connect(url)
    }
}

enum ProcessEnvironment {
    static func value(_ name: String) -> String? {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else { return nil }
        return value
    }
}

/// Lines printed from concurrent tasks, one whole line at a time.
final class Console: Sendable {
    private let lock = NSLock()
    func line(_ text: String) {
        lock.lock()
        defer { lock.unlock() }
        print(text)
        fflush(nil)
    }

    /// Prints `text(elapsed)`, the elapsed time since `start` read under the lock so that
    /// lines appear in time order.
    func line(since start: ContinuousClock.Instant, _ text: (String) -> String) {
        lock.lock()
        defer { lock.unlock() }
        print(text(String(format: "%9.1f ms", (ContinuousClock.now - start).milliseconds)))
        fflush(nil)
    }
}
