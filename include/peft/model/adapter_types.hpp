#pragma once
// The adapter types a model can hold (AdapterSet) and a checkpoint can store (save_adapter,
// load_adapter), each named by its checkpoint format traits. Adding a method: its traits in
// io/<method>_format.hpp (see io/adapter_format.hpp for what they provide), and its line here.

#include "../io/adalora_format.hpp"
#include "../io/lora_format.hpp"
#include "../io/lora_xs_format.hpp"
#include "../io/nola_format.hpp"
#include "../io/rosa_format.hpp"
#include "format_list.hpp"

namespace peft {

using AdapterFormats = FormatList<  //
    LoraFormat,                     // peft_type LORA: Lora<T, B>
    RosaFormat,                     // peft_type ROSA: Rosa<T, B>
    NolaFormat,                     // peft_type NOLA: Nola<T, B>
    LoraXsFormat,                   // peft_type LORA_XS: LoraXs<T, B>
    AdaLoraFormat                   // peft_type ADALORA: AdaLora<T, B>
    >;

/// Every adapter type a set (and a checkpoint) can hold.
template <class T, class B>
using AnyAdapter = AdapterFormats::Variant<T, B>;

}  // namespace peft
