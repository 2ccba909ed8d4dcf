// `dsv3 train` on a corpus holding one invalid UTF-8 byte: a clear error naming the file and the
// byte offset (not an abort), or, with skip_invalid_documents, a run that says what it skipped.
#include <gtest/gtest.h>

#include <fstream>

#include "train_support.h"

namespace dsv3 {
namespace {

TEST(CliTrain, AnInvalidByteInTheCorpusFailsNamingTheFileOrIsSkipped) {
  auto setup = test::training_setup("cli-utf8", 4);
  const auto bad = setup.dir / "bad speech.txt";
  std::ofstream(bad, std::ios::binary) << "We the People of the United States, \xE2\x82 in Order";
  std::vector<std::string> corpus = setup.corpus;
  corpus.insert(corpus.begin() + 1, bad.string());
  nlohmann::json config = {{"model_config", setup.config.model_config},
                           {"tokenizer", setup.config.tokenizer},
                           {"corpus", corpus},
                           {"seq_len", 32},
                           {"batch_size", 1},
                           {"steps", 1},
                           {"validation_fraction", 0.25}};
  const auto path = setup.dir / "train.json";
  std::ofstream(path) << config.dump(2);
  std::string output;
  EXPECT_EQ(test::run_dsv3("train --config '" + path.string() + "'", output), 1) << output;
  EXPECT_NE(output.find("dsv3: error: " + bad.string() + ": "), std::string::npos) << output;
  EXPECT_NE(output.find("bad byte 0xE2 at byte offset 36"), std::string::npos) << output;
  EXPECT_NE(output.find("skip_invalid_documents"), std::string::npos) << output;

  config["skip_invalid_documents"] = true;
  std::ofstream(path) << config.dump(2);
  output.clear();
  ASSERT_EQ(test::run_dsv3("train --config '" + path.string() + "'", output), 0) << output;
  EXPECT_NE(output.find("corpus: 4 documents"), std::string::npos) << output;
  EXPECT_NE(output.find("skipped 1 document that cannot be encoded"), std::string::npos) << output;
  EXPECT_NE(output.find(bad.string() + ": text to encode is not valid UTF-8"), std::string::npos) << output;
  EXPECT_NE(output.find("trained steps 1..1"), std::string::npos) << output;
}

}  // namespace
}  // namespace dsv3
