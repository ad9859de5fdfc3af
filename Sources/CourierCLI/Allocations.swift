import CAllocationCounter

/// The process's allocation count, from the malloc counter linked into this executable
/// (glibc only; elsewhere ``available`` is false and the count stays 0).
enum Allocations {
    static var available: Bool { courier_allocation_counter_available() }
    /// Allocations by every thread since the process started.
    static var count: UInt64 { courier_allocation_count() }
}
