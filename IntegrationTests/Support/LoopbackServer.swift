import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP server on 127.0.0.1 that is not a broker: it accepts connections and then either
/// closes each at once or holds it open without ever answering. For tests of what clients
/// report when a server misbehaves. Stops (and closes everything) on ``stop()``.
final class LoopbackServer: @unchecked Sendable {
    enum Behaviour: Sendable { case closeAtOnce, neverAnswer }

    let port: Int
    private let listener: Int32
    private final class Shared: Sendable {
        let held = Mutex<[Int32]>([])
        let stopped = Atomic<Bool>(false)
    }
    private let shared = Shared()
    private let thread: Thread

    init(_ behaviour: Behaviour) throws {
        #if canImport(Glibc)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
            let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard bound == 0, listen(fd, 64) == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
        listener = fd
        let shared = shared
        thread = Thread {
            while !shared.stopped.load(ordering: .relaxed) {
                let client = accept(fd, nil, nil)
                guard client >= 0 else { continue }
                switch behaviour {
                case .closeAtOnce: close(client)
                case .neverAnswer: shared.held.withLock { $0.append(client) }
                }
            }
        }
        thread.start()
    }

    /// Stops accepting and closes every connection held.
    func stop() {
        guard !shared.stopped.exchange(true, ordering: .relaxed) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for client in shared.held.withLock({ $0 }) { close(client) }
    }

    deinit { stop() }
}
