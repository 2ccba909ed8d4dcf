#pragma once
// Every instruction set this CPU has, forced in turn, so AVX2 and scalar are checked on an AVX-512
// machine too; restores the automatic choice when it goes out of scope.
#include <optional>
#include <vector>

#include "kernels/cpu/ops.h"

namespace dsv3::test {

struct EachIsa {
  std::vector<kernels::Isa> isas;
  EachIsa() {
    for (auto isa : {kernels::Isa::scalar, kernels::Isa::avx2, kernels::Isa::avx512})
      if (kernels::isa_supported(isa)) isas.push_back(isa);
  }
  ~EachIsa() { kernels::set_isa_for_testing(std::nullopt); }
};

}  // namespace dsv3::test
