import Foundation
import XCTest

@testable import LoRADist

/// The vectorised exp and tanh against libm over their working range.
final class FastMathTests: XCTestCase {
    func testVexpIsWithinFourUlpOfLibm() {
        var worst: Double = 0
        var x: Float = -87
        while x < 88 {
            let got = Double(vexp(SIMD8<Float>(repeating: x))[0])
            let want = Foundation.exp(Double(x))
            worst = max(worst, abs(got - want) / want)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 4 * 1.2e-7)
        XCTAssertEqual(vexp(SIMD8<Float>(repeating: -200))[0], 0)
        XCTAssertEqual(sexp(0), 1)
    }

    func testVtanhIsWithinTwoTenMillionthsAbsolute() {
        var worst: Double = 0
        var u: Float = -20
        while u < 20 {
            worst = max(worst, abs(Double(vtanh(SIMD8<Float>(repeating: u))[0]) - Foundation.tanh(Double(u))))
            u += 0.0071
        }
        XCTAssertLessThan(worst, 2e-7)
    }
}
