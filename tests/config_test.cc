// config.json as Hugging Face writes it, and as a careless editor leaves it: each wrong type or
// senseless value is an Error naming the file and the key, never the JSON library's bare
// type_error and never a silent default.
#include "model/config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "util/error.h"

namespace eigenkv::model {
namespace {

using nlohmann::json;

json llama_config() {
  return json::parse(R"({"model_type": "llama", "vocab_size": 512, "hidden_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 128, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu"})");
}

// The error config_from_hf throws for `j`, or "" when it accepts it.
std::string error_of(const json& j) {
  try {
    config_from_hf(j, "dir/config.json");
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an eigenkv::Error: ") + e.what();
  }
  return "";
}

TEST(HfConfig, ReadsAValidConfig) {
  const ModelConfig c = config_from_hf(llama_config(), "dir/config.json");
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.n_ctx_train, 256);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  // null means absent, as in Hugging Face's configs
  json j = llama_config();
  j["rope_scaling"] = nullptr;
  j["head_dim"] = nullptr;
  EXPECT_EQ(error_of(j), "");
}

TEST(HfConfig, WrongTypesNameTheFileAndTheKey) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"rms_norm_eps", "x"},       {"tie_word_embeddings", "yes"}, {"rope_theta", true},
      {"vocab_size", 5.5},         {"hidden_size", "64"},          {"head_dim", "16"},
      {"max_position_embeddings", json::array()}, {"model_type", 3},
      {"rope_scaling", "x"},       {"attention_bias", 1},
  };
  for (const auto& [key, value] : cases) {
    json j = llama_config();
    j[key] = value;
    const std::string e = error_of(j);
    EXPECT_NE(e.find("dir/config.json"), std::string::npos) << key << ": " << e;
    EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << key << ": " << e;
    EXPECT_EQ(e.find("type_error"), std::string::npos) << key << ": " << e;
  }
  json j = llama_config();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", "eight"}};
  EXPECT_NE(error_of(j).find("'rope_scaling.factor'"), std::string::npos) << error_of(j);
}

TEST(HfConfig, SenselessValuesAreRefused) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"rope_scaling", {{"type", "linear"}, {"factor", 0}}}}, "scaling factor"},
      {{{"rope_scaling", {{"type", "linear"}, {"factor", -2}}}}, "scaling factor"},
      {{{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8}, {"low_freq_factor", 4},
                          {"high_freq_factor", 1}}}},
       "low_freq_factor"},
      {{{"max_position_embeddings", -1}}, "training context"},
      {{{"max_position_embeddings", 0}}, "training context"},
      {{{"rms_norm_eps", 0}}, "epsilon"},
      {{{"rope_theta", -1}}, "RoPE base"},
      {{{"vocab_size", 18446744073709551615ull}}, "'vocab_size'"},
  };
  for (const auto& [patch, fragment] : cases) {
    json j = llama_config();
    j.merge_patch(patch);
    const std::string e = error_of(j);
    EXPECT_NE(e.find(fragment), std::string::npos) << patch.dump() << ": " << e;
    EXPECT_NE(e.find("dir/config.json"), std::string::npos) << e;
  }
  EXPECT_NE(error_of(json::array()).find("expected a JSON object"), std::string::npos);
}

}  // namespace
}  // namespace eigenkv::model
