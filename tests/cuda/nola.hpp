#pragma once
// NOLA's GPU primitives for the CUDA tests, behind plain C++ (the rules of gpu.hpp): basis
// entries drawn by a kernel, and gpu::nola_combine / gpu::nola_project on device copies of host
// matrices. The element type P is f32 or f64.

#include <cstdint>
#include <span>
#include <vector>

#include <peft/core/random.hpp>

#include "gpu.hpp"

namespace peft::gpu {

/// basis.entry(members[k], elements[k]) for every k, computed by a kernel.
std::vector<float> nola_basis_entries(const RandomBasis& basis,
                                      std::span<const std::uint32_t> members,
                                      std::span<const std::uint64_t> elements);

/// gpu::nola_combine(basis, coefficients, beta, out) with out starting as `start` (a device
/// matrix of dtype p, strided or not, its gaps NaN); returns out. gaps_untouched reports whether
/// the gaps of a strided out are still NaN.
HostMatrix nola_combine(DType p, const RandomBasis& basis, HostView coefficients, double beta,
                        HostView start, bool strided, bool* gaps_untouched = nullptr);

/// gpu::nola_project(basis, grad, coefficient_grads) with coefficient_grads starting as `start`;
/// returns coefficient_grads. A strided grad lives inside a larger NaN-filled matrix.
HostMatrix nola_project(DType p, const RandomBasis& basis, HostView grad, HostView start,
                        bool strided);

/// Workspace bytes gpu::nola_project takes for `count` members of `elements` entries.
index_t nola_project_workspace_bytes(index_t count, index_t elements);

}  // namespace peft::gpu
