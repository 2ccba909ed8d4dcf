#pragma once
// A non-owning reference to a callable: two pointers, no allocation, cheap to pass by value. The
// callable must outlive the FunctionRef, as a lambda written in a call expression outlives the call.
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace dsv3 {

template <typename Signature>
class FunctionRef;

template <typename Result, typename... Args>
class FunctionRef<Result(Args...)> {
 public:
  template <typename Callable>
    requires(!std::is_same_v<std::remove_cvref_t<Callable>, FunctionRef> &&
             !std::is_function_v<std::remove_reference_t<Callable>> &&
             std::is_invocable_r_v<Result, Callable&, Args...>)
  FunctionRef(Callable&& callable) noexcept  // NOLINT(google-explicit-constructor): a lambda converts implicitly
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(callable)))),
        call_(&invoke<std::remove_reference_t<Callable>>) {}

  Result operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  template <typename Callable>
  static Result invoke(void* object, Args... args) {
    if constexpr (std::is_void_v<Result>)
      std::invoke(*static_cast<Callable*>(object), std::forward<Args>(args)...);
    else
      return std::invoke(*static_cast<Callable*>(object), std::forward<Args>(args)...);
  }

  void* object_;
  Result (*call_)(void*, Args...);
};

}  // namespace dsv3
