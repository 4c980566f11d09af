import Foundation

/// Seconds on a monotonic clock, for timing intervals (steps, GEMMs, collectives).
@inline(__always) func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }
