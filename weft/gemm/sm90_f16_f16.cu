// sm_90a GEMM kernels, A/B __half, C __half: explicit instantiations of every shipped variant.
#include "weft/gemm/detail/launch_sm90.cuh"

#define WEFT_TIN __half
#define WEFT_TOUT __half

namespace weft::gemm::detail {

WEFT_GEMM_SM90_VARIANTS(WEFT_GEMM_SM90_INSTANTIATE_ONE)

void register_sm90_f16_f16(std::vector<Variant>& out) {
  WEFT_GEMM_SM90_VARIANTS(WEFT_GEMM_SM90_REGISTER_ONE)
}

}  // namespace weft::gemm::detail
