#pragma once
// Process-wide switches read from the environment, so that ranks and child processes agree.

namespace dsv3 {

// The value of a 1-or-0 variable: `fallback` when unset or empty; anything else is an error
// naming the variable.
bool env_flag(const char* name, bool fallback);

}  // namespace dsv3
