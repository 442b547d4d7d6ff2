#pragma once
// Stable handles to layers. Layers are movable (they live in std::vector, std::optional, ...),
// so anything that remembers a layer past one call (AdamW, RosaMaskBuilder) holds a
// LayerHandle instead of a pointer: the layer re-points it when it moves, and clears it when it
// is destroyed or overwritten, so a stale registration throws a peft::Error instead of
// touching freed memory.

#include <memory>

#include "../core/error.hpp"

namespace peft {

template <class Layer>
class LayerHandle {
 public:
  LayerHandle() = default;
  explicit LayerHandle(std::shared_ptr<Layer*> slot) : slot_(std::move(slot)) {}

  /// Whether the layer still exists (it may have moved since the handle was taken).
  bool alive() const noexcept { return slot_ && *slot_ != nullptr; }

  /// The layer wherever it lives now; `where` names the caller in the error.
  Layer& get(const char* where) const {
    PEFT_CHECK(alive(), ErrorKind::state, where,
               ": a registered layer no longer exists (destroyed, or overwritten by a move "
               "assignment); register layers that outlive their optimizer and mask builder");
    return **slot_;
  }

  /// The same layer (for finding duplicates); compares identities, not positions.
  bool same_layer(const LayerHandle& other) const noexcept { return slot_ == other.slot_; }

 private:
  std::shared_ptr<Layer*> slot_;
};

namespace detail {

/// CRTP base of every layer: keeps the slot its LayerHandles share pointing at the layer.
template <class Derived>
class HandleAnchor {
 public:
  LayerHandle<Derived> handle() {
    PEFT_CHECK(slot_ != nullptr, ErrorKind::state, "handle: the layer was moved from");
    return LayerHandle<Derived>(slot_);
  }

 protected:
  HandleAnchor() : slot_(std::make_shared<Derived*>(static_cast<Derived*>(this))) {}
  HandleAnchor(const HandleAnchor&) = delete;
  HandleAnchor& operator=(const HandleAnchor&) = delete;
  HandleAnchor(HandleAnchor&& other) noexcept : slot_(std::move(other.slot_)) { repoint(); }
  HandleAnchor& operator=(HandleAnchor&& other) noexcept {
    if (this != &other) {
      if (slot_) *slot_ = nullptr;  // the state registered under the old slot is gone
      slot_ = std::move(other.slot_);
      repoint();
    }
    return *this;
  }
  ~HandleAnchor() {
    if (slot_) *slot_ = nullptr;
  }

 private:
  void repoint() noexcept {
    if (slot_) *slot_ = static_cast<Derived*>(this);
  }

  std::shared_ptr<Derived*> slot_;
};

}  // namespace detail
}  // namespace peft
