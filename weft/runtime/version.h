// weft's release, in one place: the `weft` command prints it, the Python package exposes it as
// weft.__version__, and CMake refuses to configure when project(VERSION) says otherwise.
#pragma once

namespace weft {

inline constexpr const char* kVersion = "0.1.0";

}  // namespace weft
