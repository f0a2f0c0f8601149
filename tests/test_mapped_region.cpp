// Checkpoint tensors as views of the file's pages: equal to a copy, alive
// after the reader, private to the process when written, and valid after
// their pages are handed back to the kernel.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dha/io/mapped_region.h"
#include "dha/io/safetensors.h"
#include "test_util.h"

TEST(MappedRegion, MappedTensorsViewTheFileAndStayPrivate) {
  dha::test::TempDir tmp;
  const std::string path = tmp.file("w.safetensors");
  torch::manual_seed(5);
  const torch::Tensor big = torch::randn({512, 300}).to(torch::kBFloat16);  // 300 KiB: many whole pages
  const torch::Tensor small = torch::randn({3});
  dha::io::save_safetensors(path, {{"big", big}, {"small", small}});

  torch::Tensor view;
  {
    const dha::io::SafetensorsFile file(path);
    view = file.mapped_tensor("big");
    EXPECT_TRUE(dha::io::is_mapped(view));
    EXPECT_TRUE(torch::equal(view, file.tensor("big")));
    EXPECT_FALSE(dha::io::is_mapped(file.tensor("big"))) << "tensor() is a copy";
  }
  // The reader is gone; the view keeps the mapping.
  EXPECT_TRUE(torch::equal(view, big));
  EXPECT_FALSE(dha::io::is_mapped(big));
  EXPECT_EQ(dha::io::release_resident_pages(big), 0) << "not file pages: nothing to hand back";

  // Handed back, the pages are read again from the file on the next access.
  EXPECT_GT(dha::io::release_resident_pages(view), 0);
  EXPECT_TRUE(torch::equal(view, big));

  // A write stays in this process: the file still holds the original.
  view.fill_(1.0);
  EXPECT_EQ(view.sum().item<double>(), static_cast<double>(view.numel()));
  dha::io::release_resident_pages(view);  // written pages are kept, never lost
  EXPECT_EQ(view.sum().item<double>(), static_cast<double>(view.numel()));
  const dha::io::SafetensorsFile again(path);
  EXPECT_TRUE(torch::equal(again.tensor("big"), big));
  EXPECT_TRUE(torch::equal(again.mapped_tensor("small"), small));
}
