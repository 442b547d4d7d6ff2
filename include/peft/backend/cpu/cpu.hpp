#pragma once
// The CPU backend: Context<Cpu> and every primitive the adapters call.

#include "context.hpp"
#include "dense.hpp"
#include "eigen_interop.hpp"
#include "elementwise.hpp"
#include "importance.hpp"
#include "nola.hpp"
#include "sparse.hpp"
#include "svd.hpp"
#include "transfer.hpp"
