#pragma once
// Internal to src/tokenizer: reading tokenizer.json fields with errors that name the field.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

#include "core/error.h"

namespace dsv3::tokenizer_internal {

inline std::string field_path(const std::string& where, std::string_view key) {
  return where.empty() ? std::string(key) : where + "." + std::string(key);
}

// The member `key` of `object`, which must be present.
inline const nlohmann::json& required_field(const nlohmann::json& object, std::string_view key,
                                            const std::string& where) {
  if (!object.is_object()) fail("{}: expected an object, found {}", where, object.type_name());
  auto it = object.find(key);
  if (it == object.end()) fail("{}: missing", field_path(where, key));
  return *it;
}

inline std::string string_field(const nlohmann::json& object, std::string_view key,
                                const std::string& where) {
  const nlohmann::json& value = required_field(object, key, where);
  if (!value.is_string()) fail("{}: expected a string, found {}", field_path(where, key), value.type_name());
  return value.get<std::string>();
}

// A boolean that may be absent (or null), in which case `fallback` is what Hugging Face assumes.
inline bool bool_field(const nlohmann::json& object, std::string_view key, const std::string& where,
                       bool fallback) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail("{}: expected true or false, found {}", field_path(where, key), it->type_name());
  return it->get<bool>();
}

}  // namespace dsv3::tokenizer_internal
