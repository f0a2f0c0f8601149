// dha-train's loss.svg: the training loss per logged step and the held-out
// NLL per evaluation, against tokens, read back from metrics.jsonl.
#pragma once

#include <string>

namespace dha::train_detail {

// Writes nothing when the metrics hold neither.
void write_loss_curve(const std::string& metrics_path, const std::string& svg_path, const std::string& title);

}  // namespace dha::train_detail
