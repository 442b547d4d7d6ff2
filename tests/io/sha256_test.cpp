// SHA-256 against the FIPS 180-4 examples and a multi-block message fed in uneven pieces.

#include <gtest/gtest.h>

#include <string>

#include <peft/io/sha256.hpp>

namespace peft::test {
namespace {

TEST(Sha256, KnownDigests) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PiecesGiveTheSameDigest) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += static_cast<char>(i * 7 + 3);
  const std::string whole = sha256_hex(text);
  for (std::size_t piece : {1u, 3u, 55u, 56u, 63u, 64u, 65u, 200u}) {
    detail::Sha256 h;
    for (std::size_t i = 0; i < text.size(); i += piece)
      h.update(std::string_view(text).substr(i, piece));
    const auto digest = h.finish();
    static constexpr char digits[] = "0123456789abcdef";
    std::string hex;
    for (unsigned char b : digest) {
      hex.push_back(digits[b >> 4]);
      hex.push_back(digits[b & 15]);
    }
    EXPECT_EQ(hex, whole) << piece;
  }
}

}  // namespace
}  // namespace peft::test
