// sm_90a GEMM kernels, A/B __half, C float: explicit instantiations of every shipped variant.
#include "weft/gemm/detail/launch_sm90.cuh"

#define WEFT_TIN __half
#define WEFT_TOUT float

namespace weft::gemm::detail {

WEFT_GEMM_SM90_VARIANTS(WEFT_GEMM_SM90_INSTANTIATE_ONE)

void register_sm90_f16_f32(std::vector<Variant>& out) {
  WEFT_GEMM_SM90_VARIANTS(WEFT_GEMM_SM90_REGISTER_ONE)
}

}  // namespace weft::gemm::detail
