import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP server on 127.0.0.1 that is not a broker: it accepts connections and then either
/// closes each at once, holds it open without ever answering, or forwards it to a broker's
/// port on 127.0.0.1 (a node that can be taken away: ``stop()`` drops every connection and
/// refuses new ones). For tests of what clients do when a server misbehaves or goes.
/// Stops (and closes everything) on ``stop()``.
final class LoopbackServer: @unchecked Sendable {
    enum Behaviour: Sendable { case closeAtOnce, neverAnswer, forward(toPort: Int) }

    let port: Int
    private let listener: Int32
    private final class Shared: Sendable {
        let held = Mutex<[Int32]>([])
        let stopped = Atomic<Bool>(false)
        let accepted = Atomic<Int>(0)
        /// Forwarding only: 0 forwards, 1 refuses (a node down), 2 holds every byte (a node
        /// gone silent).
        let mode = Atomic<Int>(0)
    }
    /// How many connections it accepted.
    var accepted: Int { shared.accepted.load(ordering: .relaxed) }
    private let shared = Shared()
    private let thread: Thread

    init(_ behaviour: Behaviour) throws {
        let fd = Self.tcpSocket()
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = Self.loopback(port: 0)
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
                shared.accepted.add(1, ordering: .relaxed)
                if shared.mode.load(ordering: .relaxed) == 1 {
                    close(client)
                    continue
                }
                switch behaviour {
                case .closeAtOnce: close(client)
                case .neverAnswer: shared.held.withLock { $0.append(client) }
                case .forward(let port):
                    guard let upstream = Self.connect(port: port) else {
                        close(client)
                        continue
                    }
                    shared.held.withLock { $0 += [client, upstream] }
                    Self.pump(from: client, to: upstream, shared)
                    Self.pump(from: upstream, to: client, shared)
                }
            }
        }
        thread.start()
    }

    /// Forwarding: drops every connection and refuses new ones (as a node that died), until
    /// ``bringUp()``.
    func takeDown() {
        shared.mode.store(1, ordering: .relaxed)
        // Shut down, not closed: ``stop()`` closes them.
        for socket in shared.held.withLock({ $0 }) { shutdown(socket, Int32(SHUT_RDWR)) }
    }

    /// Forwarding: stops passing bytes either way, keeping the connections open (as a node
    /// that hangs, or a network that drops everything), until ``bringUp()``.
    func goSilent() {
        shared.mode.store(2, ordering: .relaxed)
    }

    /// Forwarding again.
    func bringUp() {
        shared.mode.store(0, ordering: .relaxed)
    }

    /// Stops accepting and closes every connection held.
    func stop() {
        guard !shared.stopped.exchange(true, ordering: .relaxed) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        let held = shared.held.withLock { $0 }
        // Shut down first: it wakes the forwarding threads blocked in read(2) on them.
        for socket in held { shutdown(socket, Int32(SHUT_RDWR)) }
        for socket in held { close(socket) }
    }

    private static func tcpSocket() -> Int32 {
        #if canImport(Glibc)
            socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
            socket(AF_INET, SOCK_STREAM, 0)
        #endif
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return address
    }

    private static func connect(port: Int) -> Int32? {
        let fd = tcpSocket()
        guard fd >= 0 else { return nil }
        var address = loopback(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// Copies bytes from one socket to the other on a thread of its own until either ends;
    /// then shuts the other down, so that its peer sees the end too.
    private static func pump(from source: Int32, to destination: Int32, _ shared: Shared) {
        Thread {
            var buffer = [UInt8](repeating: 0, count: 65_536)
            loop: while true {
                let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
                guard count > 0 else { break }
                // Silent: the bytes wait here until the node is brought up or taken down.
                while shared.mode.load(ordering: .relaxed) == 2 { usleep(10_000) }
                var sent = 0
                while sent < count {
                    let written = buffer.withUnsafeBytes { send(destination, $0.baseAddress! + sent, count - sent, Int32(MSG_NOSIGNAL)) }
                    guard written > 0 else { break loop }
                    sent += written
                }
            }
            shutdown(destination, Int32(SHUT_RDWR))
        }.start()
    }

    deinit { stop() }
}
