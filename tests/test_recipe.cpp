// Recipe fields defined once: the conversion and training tables read and write
// every option, refuse unknown keys and wrong types, and are what the tools'
// command lines offer.
#include <gtest/gtest.h>

#include <set>

#include <nlohmann/json.hpp>

#include "dha/convert.h"
#include "dha/error.h"
#include "dha/train.h"
#include "test_util.h"

namespace {

using dha::test::expect_one_line_error;
using nlohmann::json;

template <class Options>
void expect_well_formed(const dha::RecipeFields<Options>& fields) {
  std::set<std::string> keys, flags;
  for (const auto& f : fields) {
    EXPECT_TRUE(keys.insert(f.key).second) << "key " << f.key << " twice";
    EXPECT_FALSE(f.help.empty()) << f.key;
    if (f.flag.empty()) continue;
    EXPECT_EQ(f.flag.rfind("--", 0), 0u) << f.flag;
    EXPECT_TRUE(flags.insert(f.flag).second) << "flag " << f.flag << " twice";
  }
  // Every field is written, and what is written reads back to the same options.
  const json written = dha::write_recipe(Options{}, fields);
  EXPECT_EQ(written.size(), fields.size());
  EXPECT_EQ(dha::write_recipe(dha::read_recipe(written, fields, "w"), fields), written);
}

}  // namespace

TEST(Recipe, ConvertAndTrainTablesAreWellFormedAndRoundTrip) {
  expect_well_formed(dha::convert_recipe_fields());
  expect_well_formed(dha::train_recipe_fields());
}

TEST(Recipe, AKeySetsItsFieldAndTheOthersKeepTheirDefaults) {
  const dha::ConvertOptions o = dha::convert_options_from_json(
      json{{"budget", 0.125}, {"calib", json::array({"a.txt", "b.txt"})}, {"adaptive", true}, {"seed", 7}, {"_comment", "x"}}, "r");
  EXPECT_EQ(o.budget, 0.125);
  EXPECT_EQ(o.calib, (std::vector<std::string>{"a.txt", "b.txt"}));
  EXPECT_TRUE(o.adaptive);
  EXPECT_EQ(o.seed, 7u);
  EXPECT_EQ(o.fusion_steps, dha::ConvertOptions{}.fusion_steps);
  const dha::TrainConfig c = dha::train_config_from_json(json{{"micro_batch", 3}, {"lr", 2e-4}}, "t");
  EXPECT_EQ(c.micro_batch, 3);
  EXPECT_EQ(c.lr, 2e-4);
  EXPECT_EQ(c.grad_clip, dha::TrainConfig{}.grad_clip);
}

TEST(Recipe, UnknownKeysAndWrongTypesAreOneLineErrorsNamingTheRecipe) {
  struct Case {
    json recipe;
    std::string needle;
  };
  const std::vector<Case> convert_cases = {
      {json{{"budgett", 0.25}}, "recipe.json: unknown key \"budgett\""},
      {json{{"budget", "0.25"}}, "recipe.json: \"budget\" must be a number (got \"0.25\")"},
      {json{{"batch", 1.5}}, "\"batch\" must be an integer (got 1.5)"},
      {json{{"adaptive", "true"}}, "\"adaptive\" must be true or false"},
      // Keys of earlier versions say what they became.
      {json{{"uniform", true}}, "recipe.json: \"uniform\" is now \"adaptive\" with the opposite meaning"},
      {json{{"export", "dha"}}, "recipe.json: \"export\" is now \"export_format\""},
      {json{{"seed", -1}}, "\"seed\" must be a non-negative integer"},
      {json{{"calib", json::array({"a.txt", 3})}}, "\"calib\" must be a list of strings"},
      {json::array({1, 2}), "recipe.json: a recipe must be a JSON object"},
  };
  for (const auto& c : convert_cases)
    expect_one_line_error([&] { dha::convert_options_from_json(c.recipe, "recipe.json"); }, c.needle);
  expect_one_line_error([&] { dha::train_config_from_json(json{{"batch", 4}}, "train.json"); },
                        "train.json: unknown key \"batch\"");  // the recipe key is micro_batch; --batch is the flag
  expect_one_line_error([&] { dha::train_config_from_json(json{{"micro_batch", 0}}, "train.json"); },
                        "micro_batch and grad_accum must be positive");
}

// The tools offer exactly the table's flags: each one appears in --help.
TEST(Recipe, EveryFlagOfTheTablesIsAnOptionOfItsTool) {
  const auto convert_help = dha::test::run_tool("dha-convert --help", false);
  ASSERT_EQ(convert_help.code, 0);
  for (const auto& f : dha::convert_recipe_fields()) {
    if (f.flag.empty()) continue;
    EXPECT_NE(convert_help.out.find(f.flag), std::string::npos) << f.flag;
  }
  const auto train_help = dha::test::run_tool("dha-train --help", false);
  ASSERT_EQ(train_help.code, 0);
  for (const auto& f : dha::train_recipe_fields()) {
    if (f.flag.empty()) continue;
    EXPECT_NE(train_help.out.find(f.flag), std::string::npos) << f.flag;
  }
}
